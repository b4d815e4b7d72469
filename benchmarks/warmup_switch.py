"""Does `ssp`/`async` keep its accuracy when it leaves the synchronous warm-up? The evaluation curve of the
e2e test's short BatchNorm run, one line per seed.

    python benchmarks/warmup_switch.py --mode ssp --runs 5 [--set optim.momentum_correction=false ...]

Each line: seed, final accuracy, the lowest accuracy after the curve first passed 0.9 (a fall at the
switch shows here), and the curve. Results: docs/results.md, "`ssp` and `async` at the end of their warm-up".
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from weaksync.config import load_config, parse_set_pairs
from weaksync.runtime.launcher import run_local


def fall_after_peak(accuracies: list[float], peak: float = 0.9) -> float | None:
    """The lowest accuracy after the curve first reached `peak`; None if it never did."""
    first = next((i for i, a in enumerate(accuracies) if a >= peak), None)
    return None if first is None else min(accuracies[first:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="ssp")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="section.field=value, as `weaksync train`")
    args = parser.parse_args()
    extra = parse_set_pairs(args.set)
    for seed in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="warmup-switch-"))
        overrides = {  # the e2e test's small_config (tests/conftest.py) with the BatchNorm CNN
            "run.out_dir": str(out),
            "run.seed": seed,
            "train.steps": 160,
            "train.eval_interval": 0.5,
            "sync.mode": args.mode,
            "model.name": "digits-cnn-bn",
            **extra,
        }
        result = run_local(load_config(None, overrides))
        acc = [value for _, value in result.summary["accuracy_curve"]]
        low = fall_after_peak(acc)
        print(
            f"seed {seed}: final {result.summary['final_accuracy']:.3f}, lowest after 0.9: "
            f"{'-' if low is None else f'{low:.2f}'}; curve {' '.join(f'{a:.2f}' for a in acc)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
