"""`weaksync cluster`: train on a small cluster of hosts built on this machine from network namespaces.

Host 0 runs the servers, hosts 1..N one worker each (torchrun launches meeting at a store on host 0);
each host's link can be rate-limited in both directions. Needs root. Register it on the main app with
`app.command("cluster")(cluster_command)`; `python -m weaksync.cli.cluster` runs it on its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..config import ConfigError, load_config, parse_set_pairs

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def parse_limits(pairs: list[str], hosts: int) -> dict[int, str]:
    """['2=10mbit'] -> {2: '10mbit'}; hosts are 0 (servers) .. N (worker N-1)."""
    out: dict[int, str] = {}
    for pair in pairs:
        host, sep, rate = pair.partition("=")
        if not sep or not host.strip().isdigit():
            raise ConfigError(
                f"--limit '{pair}': write it as HOST=RATE, e.g. --limit 2=10mbit (host 0 runs the servers, "
                f"host i runs worker i-1)"
            )
        h = int(host)
        if h >= hosts:
            raise ConfigError(f"--limit '{pair}': host {h} does not exist: this cluster has hosts 0..{hosts - 1}")
        out[h] = _rate(rate, f"--limit '{pair}'")
    return out


def _rate(rate: str, where: str) -> str:
    from ..testbed.netcluster import parse_rate

    try:
        parse_rate(rate)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return rate.strip()


@app.command("cluster")
def cluster_command(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; flags override it"),
    workers: int | None = typer.Option(None, help="workers N, one per host 1..N (default: the config's)"),
    servers: int | None = typer.Option(None, help="servers S, all on host 0 (default: the config's)"),
    mode: str | None = typer.Option(None, help="auto | bsp | backup | partial-pull | partial | ssp | async"),
    steps: int | None = typer.Option(None, help="steps per worker on average (the run does workers × steps)"),
    rate: str | None = typer.Option(None, help="rate of every host's link, e.g. 1gbit (default: no limit)"),
    limit: list[str] = typer.Option(
        [], "--limit", help="HOST=RATE for one host's link, both directions, e.g. 2=10mbit (host 2 = worker 1)"
    ),
    set_: list[str] = typer.Option([], "--set", help="any config field: section.field=value (repeatable)"),
    out_dir: str | None = typer.Option(None, help="parent of run directories (default: runs)"),
    name: str | None = typer.Option(None, help="run directory name"),
    timeout: float | None = typer.Option(None, help="stop the run after this many seconds"),
    cleanup: bool = typer.Option(False, "--cleanup", help="remove namespaces left by a crashed run, then exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines"),
) -> None:
    """Train on hosts made of network namespaces, with rate-limited links (needs root).

    Host 0 runs the servers, host i runs worker i-1; --rate and --limit shape links in both directions (tbf)."""
    from ..runtime.launcher import RunFailed
    from ..testbed.netcluster import (
        MAX_HOSTS,
        NEEDS_ROOT,
        NetCluster,
        NetClusterError,
        check_privileges,
        check_run,
        cleanup_stale,
        run_training,
    )

    console = Console()
    try:
        check_privileges()
    except NetClusterError:
        raise ConfigError(NEEDS_ROOT) from None
    if cleanup:
        removed = cleanup_stale()
        console.print(f"removed {len(removed)} namespaces{': ' + ' '.join(removed) if removed else ''}")
        return
    overrides = {
        "cluster.workers": workers,
        "cluster.servers": servers,
        "sync.mode": mode,
        "train.steps": steps,
        "run.out_dir": out_dir,
        "run.name": name,
        **parse_set_pairs(set_),
    }
    cfg = load_config(config, overrides)  # everything is checked before a namespace exists
    hosts = cfg.cluster.workers + 1
    base = _rate(rate, "--rate") if rate is not None else None
    limits = parse_limits(limit, hosts)
    say = (lambda _m: None) if quiet else (lambda m: console.print(m, highlight=False))
    total = cfg.train.steps * cfg.cluster.workers  # the run's step budget is shared by its workers

    def progress(elapsed: float, steps_done: dict[int, int]) -> None:
        per_worker = "  ".join(f"w{w} {n}" for w, n in steps_done.items())
        say(f"{elapsed:5.0f}s  steps {sum(steps_done.values())}/{total}  {per_worker}")

    if hosts > MAX_HOSTS:
        raise ConfigError(f"cluster.workers={cfg.cluster.workers}: weaksync cluster builds at most {MAX_HOSTS - 1} "
                          f"worker hosts on one machine")  # fmt: skip
    run_dir = check_run(cfg)  # model, data, run directory: checked before a namespace exists
    cluster_name = "(not built yet)"
    try:
        with NetCluster(hosts) as net:
            for h in range(hosts):
                r = limits.get(h, base)
                if r is not None:
                    net.limit(h, r)
            say(
                f"cluster {net.name}: host 0 = {cfg.cluster.servers} server(s) at {net.ip(0)}, "
                f"hosts 1..{hosts - 1} = workers 0..{hosts - 2}; links: "
                + ", ".join(f"h{h} {net.limits.get(h, 'unlimited')}" for h in range(hosts))
            )
            cluster_name = net.name
            run_training(net, cfg, run_id=run_dir.name, timeout=timeout, log=say,
                         progress=None if quiet else progress, check=False)  # fmt: skip
    except NetClusterError as exc:
        raise RunFailed(str(exc)) from None
    except KeyboardInterrupt:
        # typer turns a KeyboardInterrupt into a silent exit code; an exception keeps the one-line message
        raise RunFailed(f"interrupted: every process stopped and cluster {cluster_name} removed") from None
    summary = json.loads((run_dir / "summary.json").read_text())
    print_cluster_summary(console, run_dir, summary, limits, base)


def print_cluster_summary(
    console: Console, run_dir: Path, summary: dict, limits: dict[int, str], base: str | None
) -> None:
    def fmt(value: object, pattern: str = "{:.3f}") -> str:
        return "-" if value is None else pattern.format(value)

    console.print(f"run directory: {run_dir}", highlight=False)
    console.print(
        f"final accuracy {fmt(summary.get('final_accuracy'))}, training time "
        f"{fmt(summary.get('train_seconds'), '{:.1f} s')}, mode {summary.get('mode')} "
        f"k={summary.get('k')} b={summary.get('b')}",
        highlight=False,
    )
    table = Table(box=None, header_style="bold")
    for col in ("worker", "host", "link", "status", "steps", "steps/s", "accepted"):
        table.add_column(col, justify="right")
    status = summary.get("worker_status", {})
    for w, stats in sorted(summary.get("workers", {}).items(), key=lambda kv: int(kv[0])):
        host = int(w) + 1
        table.add_row(
            w,
            str(host),
            limits.get(host, base) or "unlimited",
            str(status.get(w, "-")),
            str(stats.get("steps", "-")),
            fmt(stats.get("steps_per_s"), "{:.1f}"),
            fmt(stats.get("accepted_share"), "{:.0%}"),
        )
    console.print(table)


def main() -> None:
    """`python -m weaksync.cli.cluster ...`: the same command outside the main app, same one-line errors."""
    import signal

    from ..runtime.launcher import RunFailed
    from ..training.data import DataError

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    err = Console(stderr=True, soft_wrap=True)
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer's answer to a KeyboardInterrupt it caught
            err.print("weaksync: interrupted")
        sys.exit(code or 0)
    except (ConfigError, DataError) as exc:
        err.print(f"[red]weaksync: error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except RunFailed as exc:
        err.print(f"[red]weaksync: run failed:[/red] {exc}", highlight=False)
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        err.print("weaksync: interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not hasattr(exc, "format_message"):
            raise
        err.print(f"[red]weaksync: error:[/red] {exc.format_message()} (see --help)", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
