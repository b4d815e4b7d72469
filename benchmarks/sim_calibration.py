"""How well the simulator predicts real runs: fit the per-message cost on one run, predict every run of a bench.

    weaksync bench --scenario none --scenario slow-worker-x4 --scenario slow-server --mode bsp --mode backup \\
        --mode partial-pull --mode partial --mode ssp --mode async --mode auto --repeats 1 --out runs/calib
    python benchmarks/sim_calibration.py runs/calib --fit-on none__bsp__0

Each run is simulated from its own config, θ size and measured worker times (weaksync/sim/calibrate.py);
the cost of a message and of a byte is fitted once, on the `--fit-on` run's p50 wait, and used for all. With
`--shared-cores`, a message's CPU stretches with the processes busy at once (the embedded cluster's runs
share one machine). Prints simulated against real steps/s and p50 step time, with the error, as a Markdown
table; writes BENCH/calibration.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from weaksync.sim.calibrate import comparison, fit_message_cost, load_run, simulate_run
from weaksync.sim.timing import TimeModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path, help="a `weaksync bench` results folder")
    parser.add_argument("--fit-on", default="none__bsp__0", help="the run whose p50 wait sets the message cost")
    parser.add_argument(
        "--shared-cores", type=int, default=None, help="the runs' processes shared one machine of this many cores"
    )
    args = parser.parse_args()
    model = fit_message_cost(load_run(args.bench / args.fit_on), TimeModel(shared_cores=args.shared_cores))
    print(
        f"fitted on {args.fit_on}: message_cpu {model.message_cpu * 1e6:.1f} µs, byte_cpu {model.byte_cpu * 1e9:.3f} ns"
    )
    rows = []
    for run in sorted(p for p in args.bench.iterdir() if (p / "summary.json").is_file()):
        loaded = load_run(run)
        figures = {name: (sim, real) for name, sim, real in comparison(simulate_run(loaded, model), loaded.measured)}
        rows.append({"run": run.name, **{name: list(pair) for name, pair in figures.items()}})
    fitted = model.model_dump(exclude={"compute_samples", "send_samples"})
    (args.bench / "calibration.json").write_text(json.dumps({"model": fitted, "runs": rows}, indent=1))
    print("| run | steps/s sim / real | error | step p50 sim / real (ms) | error |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        (ss, sr), (ps, pr) = r["steps/s"], r["step time p50 (s)"]
        print(f"| {r['run']} | {ss:.1f} / {sr:.1f} | {(ss - sr) / sr:+.1%} | {ps * 1e3:.1f} / {pr * 1e3:.1f} | "
              f"{(ps - pr) / pr:+.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
