"""Per-mode table of a `weaksync bench` results folder, with per-repeat figures and ratios against bsp.

docs/results.md quotes these tables: medians of per-repeat ratios, so that machine drift between repeats
cancels (each repeat ran every mode back to back). A run's time to 95 % moves by 15-25 % between repeats
here, so `--versus-best` also gives a 90 % bootstrap interval of that median: a bound inside it is not
decided by these repeats.

    python benchmarks/mode_table.py runs/<bench> [--scenario none]
    python benchmarks/mode_table.py runs/<bench> --versus-best auto   # auto against the best static mode
    python benchmarks/mode_table.py runs/<a> runs/<b> --versus-best auto   # several benches pooled
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path

BOOTSTRAP_SAMPLES = 2000


def load(*folders: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """(scenario, mode) -> repeat -> summary.json of that run, over every folder. Ratios pair runs of the same
    repeat of the same bench (which ran them back to back), so the repeats of the i-th folder are numbered
    from i × 1000: a scenario benched in several folders pools their repeats."""
    runs: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for index, folder in enumerate(folders):
        for summary in sorted(folder.glob("*__*__*/summary.json")):
            scenario, mode, repeat = summary.parent.name.split("__")
            runs[scenario, mode][index * 1000 + int(repeat)] = json.loads(summary.read_text())
    return runs


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(runs: dict[tuple[str, str], dict[int, dict]], scenario: str) -> str:
    modes = [m for (s, m) in runs if s == scenario]
    base = runs.get((scenario, "bsp"), {})
    rows = [
        "| mode | worker steps/s | time to target (s) | per repeat | ÷ bsp (median of per-repeat ratios) "
        "| final accuracy (min–max) | final − bsp (pt) | gradients that reached an update |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    bsp_final = statistics.median(r["final_accuracy"] for r in base.values()) if base else None
    for mode in modes:
        reps = runs[scenario, mode]
        times = [reps[i]["time_to_accuracy"] for i in sorted(reps)]
        reached = [t for t in times if t is not None]
        ratios = [
            reps[i]["time_to_accuracy"] / base[i]["time_to_accuracy"]
            for i in sorted(reps)
            if i in base and reps[i]["time_to_accuracy"] and base[i]["time_to_accuracy"]
        ]
        finals = [r["final_accuracy"] for r in reps.values()]
        shares = [r["gradients"]["used_share"] * 100 for r in reps.values()]
        final = statistics.median(finals)
        rows.append(
            f"| {mode} | {statistics.median(r['steps_per_s'] for r in reps.values()):.1f} "
            f"| {_fmt(statistics.median(reached) if len(reached) == len(times) else None)} "
            f"| {', '.join(_fmt(t) for t in times)} | {_fmt(statistics.median(ratios) if ratios else None)} "
            f"| {final:.3f} ({min(finals):.3f}–{max(finals):.3f}) "
            f"| {_fmt(None if bsp_final is None else (final - bsp_final) * 100, 1)} "
            f"| {statistics.median(shares):.1f} % ({min(shares):.1f}–{max(shares):.1f}) |"
        )
    return "\n".join(rows)


def _median_time(reps: dict[int, dict]) -> float:
    times = [r["time_to_accuracy"] for r in reps.values()]
    return statistics.median(t if t is not None else float("inf") for t in times)


def _ratios(mine: dict[int, dict], ref: dict[int, dict]) -> list[float]:
    """mine's time to target ÷ ref's in the same repeat, for the repeats where both reached it."""
    return [
        mine[i]["time_to_accuracy"] / ref[i]["time_to_accuracy"]
        for i in sorted(mine)
        if i in ref and mine[i]["time_to_accuracy"] and ref[i]["time_to_accuracy"]
    ]


def _ratio(mine: dict[int, dict], ref: dict[int, dict]) -> str:
    """Median over repeats of mine's time to target ÷ ref's in the same repeat."""
    values = _ratios(mine, ref)
    return _fmt(statistics.median(values) if values else None)


def median_interval(values: list[float], level: float = 0.9, seed: int = 0) -> tuple[float, float] | None:
    """A `level` percentile-bootstrap interval of the median (None under 4 values: too few to resample)."""
    if len(values) < 4:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP_SAMPLES))
    tail = (1 - level) / 2
    return medians[int(tail * len(medians))], medians[int((1 - tail) * len(medians)) - 1]


def versus_best(runs: dict[tuple[str, str], dict[int, dict]], mode: str = "auto") -> str:
    """One row per scenario: `mode` against the best other weaksync mode (lowest median time to target) of the
    same run; PyTorch DDP, the bench's outside baseline, has a column of its own.

    The ratio is the median over repeats of mode's time ÷ that best mode's time in the same repeat; a mode
    that missed the target in a repeat counts as not reached (no ratio)."""
    rows = [
        f"| scenario | best other mode | its time (s) | {mode} time (s) | {mode} ÷ best (median of per-repeat) "
        f"| 90 % interval | repeats | {mode} ÷ bsp | {mode} ÷ DDP | {mode} final − best's final (pt) "
        f"| {mode}'s final k / b |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in sorted({s for s, _ in runs}):
        mine = runs.get((scenario, mode))
        others = {m: r for (s, m), r in runs.items() if s == scenario and m not in (mode, "ddp")}
        if not mine or not others:
            continue

        best = min(others, key=lambda m: _median_time(others[m]))

        finals = statistics.median(r["final_accuracy"] for r in mine.values())
        best_final = statistics.median(r["final_accuracy"] for r in others[best].values())
        last = mine[max(mine)].get("quorums", {})
        ks, bs = sorted(set((last.get("k") or {}).values())), sorted(set((last.get("b") or {}).values()))
        versus = _ratios(mine, others[best])
        interval = median_interval(versus)
        rows.append(
            f"| {scenario} | {best} | {_fmt(_median_time(others[best]))} | {_fmt(_median_time(mine))} "
            f"| {_ratio(mine, others[best])} | {'–' if interval is None else '–'.join(map(_fmt, interval))} "
            f"| {len(versus)} | {_ratio(mine, runs.get((scenario, 'bsp'), {}))} "
            f"| {_ratio(mine, runs.get((scenario, 'ddp'), {}))} | {(finals - best_final) * 100:+.1f} "
            f"| {'/'.join(map(str, ks))} / {'/'.join(map(str, bs))} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="bench results folders, read as one")
    parser.add_argument("--scenario", action="append", help="default: every scenario in the folder")
    parser.add_argument("--versus-best", metavar="MODE", help="one row per scenario: MODE against the best other")
    args = parser.parse_args()
    runs = load(*args.folders)
    if args.versus_best:
        print(versus_best(runs, args.versus_best))
        return
    for scenario in args.scenario or sorted({s for s, _ in runs}):
        print(f"\n{scenario}:\n\n{table(runs, scenario)}")


if __name__ == "__main__":
    main()
