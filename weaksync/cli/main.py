"""`weaksync` command line: train, run, bench, simulate, report, summarize, throttle, keys, cluster."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from ..bench.matrix import DEFAULT_MODES, DEFAULT_SCENARIOS
from ..config import Config, ConfigError, load_config, parse_set_pairs
from .progress import LiveProgress, print_summary

if TYPE_CHECKING:
    from ..runtime.launcher import Script

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="weaksync: a straggler-tolerant parameter server for PyTorch.",
)
err = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width


def _count(value: str | None, name: str) -> int | float | None:
    """k and b: an integer count ('3') or a fraction of the total ('0.75')."""
    if value is None:
        return None
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise ConfigError(f"--{name}: '{value}' is neither a count (3) nor a fraction (0.75)") from None


def _throttles(specs: list[str]) -> dict[str, float] | None:
    from ..stragglers.cgroup import parse_throttle

    try:
        return dict(parse_throttle(spec) for spec in specs) or None
    except ValueError as exc:
        raise ConfigError(f"--throttle: {exc}") from None


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; flags override it"),
    mode: str | None = typer.Option(None, help="auto | bsp | backup | partial-pull | partial | ssp | async"),
    workers: int | None = typer.Option(None, help="number of workers N"),
    servers: int | None = typer.Option(None, help="number of servers S"),
    blocks: int | None = typer.Option(None, help="parameter blocks B (default: auto)"),
    k: str | None = typer.Option(None, help="push quorum: count or fraction of N"),
    b: str | None = typer.Option(None, help="pull quorum: count or fraction of B"),
    tau: int | None = typer.Option(None, help="staleness bound"),
    push_deadline: float | None = typer.Option(None, help="seconds"),
    pull_deadline: float | None = typer.Option(None, help="seconds"),
    model: str | None = typer.Option(None, help="digits-cnn | resnet20 | resnet56 | resnet50"),
    data: str | None = typer.Option(None, help="digits | synthetic-cifar | cifar10 | imagefolder"),
    data_dir: str | None = typer.Option(None, help="folder for cifar10 / imagefolder"),
    steps: int | None = typer.Option(None, help="steps per worker"),
    batch_size: int | None = typer.Option(None, help="minibatch per worker"),
    lr: float | None = typer.Option(None, help="learning rate"),
    seed: int | None = typer.Option(None),
    out_dir: str | None = typer.Option(None, help="parent of run directories (default: runs)"),
    name: str | None = typer.Option(None, help="run directory name"),
    on_worker_failure: str | None = typer.Option(None, help="stop | continue | restart"),
    on_server_failure: str | None = typer.Option(None, help="restart (from its checkpoint; default) | stop"),
    scenario: str | None = typer.Option(None, help="straggler scenario: a shipped name or a YAML path"),
    throttle: list[str] = typer.Option([], "--throttle", help="real CPU limit: worker-1=0.25 (repeatable, root)"),
    set_: list[str] = typer.Option([], "--set", help="any config field: section.field=value (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no live progress"),
    resume: Path | None = typer.Option(None, "--resume", help="continue a stopped run from its checkpoints"),
) -> None:
    """Train on the embedded cluster: S servers, N workers and an evaluator on this machine."""
    overrides = {
        "sync.mode": mode,
        "cluster.workers": workers,
        "cluster.servers": servers,
        "cluster.blocks": blocks,
        "sync.k": _count(k, "k"),
        "sync.b": _count(b, "b"),
        "sync.tau": tau,
        "sync.push_deadline": push_deadline,
        "sync.pull_deadline": pull_deadline,
        "model.name": model,
        "data.name": data,
        "data.dir": data_dir,
        "train.steps": steps,
        "train.batch_size": batch_size,
        "optim.lr": lr,
        "run.seed": seed,
        "run.out_dir": out_dir,
        "run.name": name,
        "on_worker_failure": on_worker_failure,
        "on_server_failure": on_server_failure,
        "scenario": scenario,
        "throttle": _throttles(throttle),
        **parse_set_pairs(set_),
    }
    if resume is not None:
        from ..runtime.launcher import resume_config

        _launch(resume_config(resume, overrides), quiet)
        return
    _launch(load_config(config, overrides), quiet)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    script: Path | None = typer.Argument(
        None, help="a Python script that calls weaksync.connect(model) (with --resume: the one the run ran)"
    ),
    args: list[str] = typer.Argument(None, help="the script's own arguments (after --)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; flags override it"),
    mode: str | None = typer.Option(None, help="auto | bsp | backup | partial-pull | partial | ssp | async"),
    workers: int | None = typer.Option(None, help="number of workers N"),
    servers: int | None = typer.Option(None, help="number of servers S"),
    blocks: int | None = typer.Option(None, help="parameter blocks B (default: auto)"),
    steps: int | None = typer.Option(None, help="steps per worker"),
    batch_size: int | None = typer.Option(None, help="minibatch per worker (the script reads ps.config)"),
    lr: float | None = typer.Option(None, help="learning rate of the servers' optimizer"),
    scenario: str | None = typer.Option(None, help="straggler scenario: a shipped name or a YAML path"),
    out_dir: str | None = typer.Option(None, help="parent of run directories (default: runs)"),
    name: str | None = typer.Option(None, help="run directory name"),
    set_: list[str] = typer.Option([], "--set", help="any config field: section.field=value (repeatable)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no live progress"),
    resume: Path | None = typer.Option(None, "--resume", help="continue a stopped run from its checkpoints"),
) -> None:
    """Run your own script on the embedded cluster: it starts once per server, worker and the evaluator, and
    weaksync.connect(model) gives each its role (as under torchrun, one host)."""
    from ..runtime.launcher import Script, check_script, recorded_script, resume_config

    if script is None and resume is None:
        raise ConfigError("weaksync run needs a script: weaksync run my_script.py [ARGS...]")
    if script is not None:
        check_script(str(script))
    overrides = {
        "sync.mode": mode,
        "cluster.workers": workers,
        "cluster.servers": servers,
        "cluster.blocks": blocks,
        "train.steps": steps,
        "train.batch_size": batch_size,
        "optim.lr": lr,
        "scenario": scenario,
        "run.out_dir": out_dir,
        "run.name": name,
        **parse_set_pairs(set_),
    }
    if resume is not None:
        again = recorded_script(resume) if script is None else Script(str(script.resolve()), tuple(args or ()))
        _launch(resume_config(resume, overrides), quiet, script=again)
        return
    assert script is not None
    _launch(load_config(config, overrides), quiet, script=Script(str(script.resolve()), tuple(args or ())))


def _launch(cfg: Config, quiet: bool, script: Script | None = None) -> None:
    """One embedded run with the live view, then its summary."""
    from ..runtime.launcher import run_local

    console = Console()
    progress = None if quiet else LiveProgress(console, cfg)
    try:
        if progress:
            progress.start()
        result = run_local(cfg, on_progress=progress.update if progress else None, script=script)
    finally:
        if progress:
            progress.stop()
    print_summary(console, result.run_dir, result.summary)


@app.command()
def bench(
    scenarios: list[str] = typer.Option(
        list(DEFAULT_SCENARIOS),
        "--scenario",
        help="repeatable; 'none' = no stragglers, 'all' = none + every shipped scenario",
    ),
    modes: list[str] = typer.Option(list(DEFAULT_MODES), "--mode", help="repeatable; 'ddp' = PyTorch DDP (gloo)"),
    repeats: int = typer.Option(2, min=1, help="interleaved repeats of the whole matrix"),
    out: Path | None = typer.Option(None, help="results directory (default: runs/bench-<time>)"),
    set_: list[str] = typer.Option([], "--set", help="any config field for every run: section.field=value"),
) -> None:
    """Run a scenario × mode matrix side by side and report ratios against bsp and PyTorch DDP."""
    import time as _time

    from rich.progress import Progress

    from ..bench.matrix import expand_scenarios, plan, run_matrix

    out_dir = out or Path("runs") / f"bench-{_time.strftime('%Y%m%d-%H%M%S')}"
    overrides = parse_set_pairs(set_)
    scenarios = expand_scenarios(scenarios)
    console = Console()
    cells = plan(scenarios, modes, repeats)
    with Progress(console=console) as progress:
        task = progress.add_task("bench", total=len(cells))

        def on_cell(cell, summary, failure) -> None:
            what = failure or f"acc {summary['final_accuracy']:.3f}, {summary['steps_per_s']:.0f} steps/s"
            progress.console.print(f"{cell.scenario} / {cell.mode} / repeat {cell.repeat}: {what}")
            progress.advance(task)

        run_matrix(scenarios, modes, repeats, out_dir, overrides, on_cell)
    console.print((out_dir / "results.md").read_text())
    console.print(f"results: {out_dir} (weaksync report {out_dir}/* renders the runs)")


@app.command()
def simulate(
    workers: int = typer.Option(4, min=1, help="N"),
    servers: int = typer.Option(2, min=1, help="S"),
    blocks: int | None = typer.Option(None, min=1, help="B (default: a real run's, ~4 MiB blocks, >= 2 per server)"),
    mode: str | None = typer.Option(None, help="sync mode (default: the config's, auto)"),
    steps: int = typer.Option(100, min=1, help="steps per worker"),
    scenario: str | None = typer.Option(None, help="straggler scenario: a shipped name or a YAML path"),
    model_bytes: int = typer.Option(605_224, min=1, help="bytes of θ (default: the digits CNN's)"),
    coalesce: bool | None = typer.Option(
        None, help="one push, pull and reply message per server, or one per block (default: the config's, coalesced)"
    ),
    calibrate: Path | None = typer.Option(None, help="predict this real run: its config, size, compute and send times"),
    fit: bool = typer.Option(False, help="with --calibrate: fit the per-message cost to this run's p50 wait"),
    seed: int = typer.Option(0),
    set_: list[str] = typer.Option([], "--set", help="config fields, and time model fields as time.FIELD=value"),
    out: Path | None = typer.Option(None, help="write the simulated summary here (JSON)"),
) -> None:
    """Simulate a run with the protocol core on a simulated clock: the scale questions (N to 1,000), and
    --calibrate to check the simulator against a real run."""
    import json

    from pydantic import ValidationError

    from ..core.layout import resolve_num_blocks
    from ..sim.calibrate import comparison, fit_message_cost, load_run, simulate_run
    from ..sim.engine import Simulation, even_blocks
    from ..sim.timing import TimeModel

    pairs = parse_set_pairs(set_)
    try:
        model = TimeModel(**{k.removeprefix("time."): v for k, v in pairs.items() if k.startswith("time.")})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(
            f"--set time.{field}: {first['msg'].lower()}: see the fields of weaksync/sim/timing.py"
        ) from None
    console = Console()
    if calibrate is not None:
        run = load_run(calibrate)
        if fit:
            model = fit_message_cost(run, model)
            console.print(
                f"fitted: message_cpu {model.message_cpu * 1e6:.1f} µs, byte_cpu {model.byte_cpu * 1e9:.3f} ns"
            )
        summary = simulate_run(run, model, seed=seed, coalesce=coalesce)
        console.print(f"simulated {calibrate} ({summary['mode']}, N={summary['num_workers']})")
        for name, sim, real in comparison(summary, run.measured):
            error = f"{(sim - real) / real:+.1%}" if sim is not None and real else "-"
            console.print(f"  {name:20} simulated {sim if sim is None else f'{sim:.4g}':>10}  real "
                          f"{real if real is None else f'{real:.4g}':>10}  error {error}")  # fmt: skip
    else:
        overrides = {"cluster.workers": workers, "cluster.servers": servers, "cluster.blocks": blocks,
                     "sync.mode": mode, "train.steps": steps, "scenario": scenario}  # fmt: skip
        config = load_config(None, {**overrides, **{k: v for k, v in pairs.items() if not k.startswith("time.")}})
        num_blocks = resolve_num_blocks(config.cluster.blocks, model_bytes // 4, config.cluster.servers)
        sizes, owners = even_blocks(model_bytes, num_blocks, config.cluster.servers)
        summary = Simulation(config, model, sizes, owners, coalesce=coalesce, seed=seed).run()
        step = {q: v or 0.0 for q, v in summary["step_time"].items()}
        console.print(
            f"simulated {summary['mode']} N={summary['num_workers']} S={summary['num_servers']} "
            f"B={summary['num_blocks']}{' coalesced' if summary['coalesce'] else ''}: "
            f"{summary['steps_per_s']:.1f} steps/s, "
            f"step p50/p95 {step['p50'] * 1e3:.2f}/{step['p95'] * 1e3:.2f} ms, "
            f"{summary['traffic']['msgs_per_step']:.1f} messages per step; "
            f"{summary['simulation']['events']:,} events in {summary['simulation']['wall_seconds']:.1f} s"
        )
    if out is not None:
        out.write_text(json.dumps(summary, indent=1))
        console.print(f"summary: {out}")


@app.command()
def throttle(
    run_dir: Path = typer.Argument(..., help="the directory of a running run"),
    process: str = typer.Argument(..., help="worker-ID or server-ID"),
    fraction: float = typer.Argument(..., help="share of one CPU, e.g. 0.25; 1 lifts the limit"),
) -> None:
    """Change a running process's CPU limit (cgroup v1 cpu controller), e.g. to make worker-1 a straggler."""
    import json

    from ..stragglers.cgroup import CpuThrottle, ThrottleError, parse_throttle

    try:
        name, fraction = parse_throttle(f"{process}={fraction}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    log = run_dir / "events" / f"{name}.jsonl"
    if not log.exists():
        raise ConfigError(f"'{log}' does not exist: pass a run directory and a process of that run")
    pid = next((json.loads(line)["pid"] for line in log.open() if '"start"' in line), None)
    if pid is None:
        raise ConfigError(f"{name} has not started yet in {run_dir}: try again in a moment")
    try:
        group = CpuThrottle(run_dir.name).set(name, pid, fraction)
    except (ThrottleError, OSError) as exc:
        raise ConfigError(f"cannot throttle {name} (pid {pid}): {exc}") from None
    Console().print(f"{name} (pid {pid}) limited to {fraction:g} CPU via {group}")


@app.command()
def keys(
    directory: Path = typer.Argument(..., help="folder to write the run's keys into (must not hold keys yet)"),
    workers: int = typer.Option(..., min=1, max=1024, help="cluster.workers of the runs these keys serve"),
) -> None:
    """Write CURVE keys for torchrun or several hosts: set security.keys=DIR; each host needs DIR/public/ and
    the secret file of the role it runs."""
    from ..transport.security import RunKeys

    if directory.exists() and any(directory.glob("*.key_secret")):
        raise ConfigError(f"keys: '{directory}' holds keys already: choose another folder or remove them")
    RunKeys.generate(workers).write(directory)
    Console().print(f"keys for 1 server key pair, {workers} workers, the evaluator and the launcher: {directory}")


@app.command()
def summarize(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    target: float = typer.Option(0.95, help="target accuracy for time-to-accuracy"),
) -> None:
    """Rebuild summary.json of a run directory from its event logs."""
    from ..report.summary import build_summary

    if not (run_dir / "events").is_dir():
        raise ConfigError(f"'{run_dir}' is not a run directory (no events/ inside): pass a folder under runs/")
    print_summary(Console(), run_dir, build_summary(run_dir, target))


def _register_cluster() -> None:
    from .cluster import cluster_command

    app.command("cluster")(cluster_command)


_register_cluster()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="one or more run directories"),
    out: Path = typer.Option(Path("report"), "--out", help="folder for report.md, report.html and img/"),
    target: float | None = typer.Option(None, help="target accuracy for time-to-accuracy (default: each run's)"),
) -> None:
    """Compare runs: tables and plots in report.md and one self-contained report.html."""
    from ..report.build import build_report

    Console().print(f"report: {build_report(run_dirs, out, target)}")


def stop_on_interrupt() -> None:
    """Ctrl-C and `kill` stop a run cleanly (KeyboardInterrupt), also for scripts such as benchmarks/*.

    An inherited SIG_IGN for SIGINT (a background job, some CI runners) would leave every process running."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    """Console entry: bad input and failed runs end with one line on stderr and a non-zero exit."""
    from ..runtime.launcher import RunFailed
    from ..training.data import DataError

    stop_on_interrupt()
    try:
        code = app(standalone_mode=False)  # typer returns 130 on Ctrl-C instead of raising
        if code == 130:
            err.print("weaksync: interrupted")
            sys.exit(130)
    except (ConfigError, DataError) as exc:
        err.print(f"[red]weaksync: error:[/red] {exc}", highlight=False)
        sys.exit(2)
    except RunFailed as exc:
        err.print(f"[red]weaksync: run failed:[/red] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("weaksync: interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("weaksync: interrupted")
        sys.exit(130)
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # a usage error of typer's (vendored) click carries it
            raise
        ctx = getattr(exc, "ctx", None)
        command = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
        err.print(f"[red]weaksync: error:[/red] {exc.format_message()} (see weaksync{command} --help)", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
