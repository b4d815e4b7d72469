"""A/B two versions of weaksync on the digits job: a git ref against the working tree, runs interleaved.

`weaksync bench` compares modes of one code tree. To judge a change to a mode, run that mode on the old code
and on the new side by side, with a reference mode (on the new code) in the same repeat:

    python benchmarks/ab_versions.py --ref HEAD --mode auto --versus backup \\
        --scenario slow-worker-x4 --scenario slow-worker-moves --repeats 5 --out runs/ab-x

Each repeat runs, per scenario, `old` (MODE on REF), `new` (MODE on the working tree) and `versus` (the
reference on the working tree), turning their order by one per repeat and scenario, with the bench's
evaluation settings. Besides the time to target it prints the protocol's pace: when server 0 made its 100th
version, counted from the first worker's hello. That figure does not depend on how many updates a run
needed (176-240 to 95 % in the runs of 2026-12-08, from SGD and evaluation noise), so it moves far less
between repeats than the time to target does, and it shows a change to when rounds close.

Each tree is put first on `sys.path` with PYTHONPATH, from a working directory outside both trees:
`python -m` puts the working directory first, so run from inside the repository every arm imports the
working tree's code (`runs/s30-ab2`, whose two auto arms logged the same update, drop and cut counts, was
such a run). The tool checks which tree each arm imports before it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from weaksync.bench.matrix import BENCH_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
PACE_VERSION = 100  # server 0's version whose time after the first hello is the pace figure


def worktree(ref: str, into: Path) -> Path:
    """A checkout of `ref` (removed by `drop_worktree`)."""
    path = into / "ref"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)  # fmt: skip
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def env_for(tree: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(tree))


def imported_from(tree: Path, cwd: Path) -> Path:
    """The package directory that `python -m weaksync` would import with this tree first on sys.path."""
    out = subprocess.run(
        [sys.executable, "-c", "import weaksync; print(weaksync.__file__)"],
        cwd=cwd, env=env_for(tree), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(out.stdout.strip()).parent


def run_one(tree: Path, cwd: Path, mode: str, scenario: str, out: Path, extra: list[str]) -> Path | None:
    """One `weaksync train` with the bench's evaluation settings; the run directory, or None if it failed."""
    settings = [arg for key, value in BENCH_DEFAULTS.items() for arg in ("--set", f"{key}={str(value).lower()}")]
    command = [sys.executable, "-m", "weaksync", "train", "--mode", mode, "--quiet", "--out-dir", str(out)]
    command += ([] if scenario == "none" else ["--scenario", scenario]) + settings + extra
    child = subprocess.Popen(command, cwd=cwd, env=env_for(tree), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, errors = child.communicate()
    except BaseException:  # Ctrl-C or SIGTERM here: weaksync train stops its processes on SIGTERM
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise
    runs = sorted(out.glob("*/summary.json"))
    if child.returncode != 0 or not runs:
        print(f"  failed ({child.returncode}): {errors.decode()[-300:]}", file=sys.stderr)
        return None
    return runs[-1].parent


def pace(run: Path, version: int = PACE_VERSION) -> float | None:
    """Seconds from the first worker's hello to server 0's `version`-th update."""
    events = [json.loads(line) for line in (run / "events" / "server-0.jsonl").read_text().splitlines()]
    hellos = [e["t"] for e in events if e["ev"] == "hello"]
    updates = [e["t"] for e in events if e["ev"] == "update"]
    return updates[version - 1] - min(hellos) if hellos and len(updates) >= version else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="HEAD", help="the old code: a git ref (default HEAD)")
    parser.add_argument("--mode", default="auto", help="the mode both versions run (default auto)")
    parser.add_argument("--versus", default="bsp", help="the reference mode, on the working tree (default bsp)")
    parser.add_argument("--scenario", action="append", help="repeatable; `none` for no stragglers (default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="a folder for the runs")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run, as weaksync train's")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the worktree is removed on a kill too
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started as a background job
    extra = [arg for item in args.set for arg in ("--set", item)]
    args.out = args.out.resolve()  # the runs start in a scratch directory
    scenarios = args.scenario or ["none"]
    arms = {"old": args.mode, "new": args.mode, "versus": args.versus}
    with tempfile.TemporaryDirectory(prefix="weaksync-ab-") as scratch:
        cwd = Path(scratch)
        old_tree = worktree(args.ref, cwd)
        try:
            trees = {"old": old_tree, "new": ROOT, "versus": ROOT}
            for arm, tree in trees.items():
                got = imported_from(tree, cwd)
                if got != tree / "weaksync":
                    raise SystemExit(f"the {arm} arm imports {got}, not {tree / 'weaksync'}: fix PYTHONPATH")
            results: dict[tuple[str, str], dict[int, tuple[float | None, float | None]]] = {}
            for repeat in range(args.repeats):
                for index, scenario in enumerate(scenarios):
                    turn = (repeat + index) % len(arms)
                    for arm in list(arms)[turn:] + list(arms)[:turn]:
                        out = args.out / f"{scenario}__{arm}__{repeat}"
                        run = run_one(trees[arm], cwd, arms[arm], scenario, out, extra)
                        summary = json.loads((run / "summary.json").read_text()) if run else {}
                        figures = (summary.get("time_to_accuracy"), pace(run) if run else None)
                        results.setdefault((scenario, arm), {})[repeat] = figures
                        print(f"{scenario} {arm} {repeat}: time to target {figures[0]}, pace {figures[1]}", flush=True)
        finally:
            drop_worktree(old_tree)
    report(results, scenarios, args.mode, args.versus)


def report(results: dict, scenarios: list[str], mode: str, versus: str) -> None:
    """Medians per arm, and per-repeat ratios of each version against the reference."""
    print(f"\n| scenario | {mode} on | time to target ÷ {versus}, per repeat | median | pace ÷ {versus}, median |")
    print("| --- | --- | --- | --- | --- |")
    for scenario in scenarios:
        reference = results.get((scenario, "versus"), {})
        for arm in ("old", "new"):
            mine = results.get((scenario, arm), {})
            times = [ratio(mine[r][0], reference[r][0]) for r in sorted(mine) if r in reference]
            paces = [ratio(mine[r][1], reference[r][1]) for r in sorted(mine) if r in reference]
            shown = [f"{t:.2f}" if t else "–" for t in times]
            med = statistics.median(t for t in times if t) if any(times) else None
            pace_med = statistics.median(p for p in paces if p) if any(paces) else None
            print(
                f"| {scenario} | {arm} | {', '.join(shown)} | {med:.2f} | {pace_med:.2f} |"
                if med and pace_med
                else f"| {scenario} | {arm} | {', '.join(shown)} | – | – |"
            )


if __name__ == "__main__":
    main()
