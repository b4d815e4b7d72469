"""Every mode on the default digits job, interleaved and repeated, with wall time of the whole command.

    python benchmarks/modes_digits.py --repeats 2 --out runs/bench-modes

Prints a Markdown table (median over repeats) of final accuracy, time to 95 %, training time, worker
steps/s, launch-to-exit wall time and dropped contributions; the per-run summaries stay in --out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from weaksync.cli.main import stop_on_interrupt
from weaksync.config import load_config
from weaksync.core.policy import MODES
from weaksync.runtime.launcher import run_local


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-modes")
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {m: [] for m in args.modes}
    for rep in range(args.repeats):
        for mode in args.modes:  # interleaved, so drifting machine load spreads over every mode
            cfg = load_config(None, {"sync.mode": mode, "run.out_dir": args.out, "run.name": f"{mode}-{rep}"})
            started = time.monotonic()
            summary = run_local(cfg).summary
            summary["wall"] = time.monotonic() - started
            rows[mode].append(summary)
            print(f"{mode} rep {rep}: acc {summary['final_accuracy']:.3f} wall {summary['wall']:.1f}s", flush=True)

    def med(mode: str, key: str) -> float | None:
        values = [r[key] for r in rows[mode] if r[key] is not None]
        return statistics.median(values) if values else None

    def fmt(value: float | None, pattern: str) -> str:
        return "not reached" if value is None else pattern.format(value)

    print(
        "\n| mode | final accuracy | time to 95 % (s) | training (s) | worker steps/s | wall, launch to exit (s) "
        "| dropped / accepted |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode in args.modes:
        drops = statistics.median(r["contributions"]["dropped"] for r in rows[mode])
        accepted = statistics.median(r["contributions"]["accepted"] for r in rows[mode])
        print(
            f"| {mode} | {fmt(med(mode, 'final_accuracy'), '{:.3f}')} | {fmt(med(mode, 'time_to_accuracy'), '{:.2f}')} "
            f"| {fmt(med(mode, 'train_seconds'), '{:.2f}')} | {fmt(med(mode, 'steps_per_s'), '{:.0f}')} "
            f"| {fmt(med(mode, 'wall'), '{:.1f}')} | {drops:.0f} / {accepted:.0f} |"
        )
    print(
        f"\n{args.repeats} repeats, median; min final accuracy per mode: "
        + ", ".join(f"{m} {min(r['final_accuracy'] for r in rows[m]):.3f}" for m in args.modes)
    )


if __name__ == "__main__":
    Path("runs").mkdir(exist_ok=True)
    main()
