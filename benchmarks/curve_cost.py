"""What CURVE costs a whole run: the default job with security.curve on and off, interleaved, in one run.

    python benchmarks/curve_cost.py --repeats 3 [--set model.name=resnet20 --set data.name=synthetic-cifar]

Prints worker steps/s and time to the target per run, and the medians of the on/off ratios per repeat.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from weaksync.cli.main import stop_on_interrupt
from weaksync.config import load_config, parse_set_pairs
from weaksync.runtime.launcher import run_local


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="set_", action="append", default=[], help="section.field=value")
    args = parser.parse_args()
    base = {"train.eval_live": False, "train.eval_interval": 0.05, **parse_set_pairs(args.set_)}
    ratios: dict[str, list[float]] = {"steps_per_s": [], "time_to_target": []}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            got = {}
            for curve in (True, False):
                cfg = load_config(None, {**base, "security.curve": curve, "run.out_dir": out})
                s = run_local(cfg).summary
                got[curve] = s
                print(f"repeat {repeat} curve={curve}: {s['steps_per_s']:.1f} steps/s, "
                      f"time to target {s['time_to_accuracy']}, final accuracy {s['final_accuracy']:.3f}")  # fmt: skip
            ratios["steps_per_s"].append(got[True]["steps_per_s"] / got[False]["steps_per_s"])
            if got[True]["time_to_accuracy"] and got[False]["time_to_accuracy"]:
                ratios["time_to_target"].append(got[True]["time_to_accuracy"] / got[False]["time_to_accuracy"])
    for name, values in ratios.items():
        if values:
            print(f"curve on / off, {name}: median {statistics.median(values):.2f} of {[round(v, 2) for v in values]}")


if __name__ == "__main__":
    main()
