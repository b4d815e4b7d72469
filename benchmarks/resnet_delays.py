"""The paper-style experiment: ResNet on synthetic CIFAR, one worker slowed more and more, every mode side by side.

    python benchmarks/resnet_delays.py --out runs/bench-resnet

ResNet-20 on the learnable synthetic CIFAR set (32×32×3, 10 classes, 5,000 training images), 4 workers ×
batch 32, 2 servers. Worker 1's compute is made ×F slower (F = 1, 2, 4, 8: a constant delay of (F-1) × its
measured compute), and each mode (weaksync bsp, backup, partial, async, and PyTorch DDP over gloo) trains
for the same global step budget. The matrix runs interleaved (every mode of one F, then the next F, then
the next repeat) through `weaksync.bench.run_matrix`. Prints, and writes to --out/resnet.md:
time per epoch (training seconds × images per epoch / images processed), time to the target accuracy and
final accuracy per mode and F, with ratios to bsp and DDP of the same repeat; and --out/resnet.png, time to
accuracy and time per epoch against F.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from weaksync.bench.matrix import Cell, run_matrix  # noqa: E402
from weaksync.cli.main import stop_on_interrupt

MODES = ["bsp", "backup", "partial", "async", "ddp"]


def scenario_file(folder: Path, factor: float) -> str:
    """A scenario YAML slowing worker 1's compute ×factor ('none' for factor 1)."""
    if factor == 1:
        return "none"
    path = folder / f"slow-x{factor:g}.yaml"
    path.write_text(
        f"name: slow-x{factor:g}\ndescription: worker 1 computes {factor:g}x slower than measured\n"
        f"stragglers:\n  - {{target: worker, ids: [1], delay: {{kind: constant, factor: {factor}}}}}\n"
    )
    return str(path)


def load_rows(out: Path, scenarios: dict[float, str], repeats: int) -> dict[tuple[float, str, int], dict[str, Any]]:
    rows = {}
    for factor, scenario in scenarios.items():
        for mode in MODES:
            for rep in range(repeats):
                path = out / Cell(scenario, mode, rep).name / "summary.json"
                if path.exists():
                    rows[(factor, mode, rep)] = json.loads(path.read_text())
    return rows


def epoch_seconds(s: dict[str, Any], images_per_epoch: int) -> float | None:
    done = s["steps"] * s["batch_size"] if s.get("batch_size") else None
    return s["train_seconds"] * images_per_epoch / done if done and s.get("train_seconds") else None


def time_to(s: dict[str, Any], target: float) -> float | None:
    """Seconds from the first step to the first evaluation at >= target (from the curve, so --reuse can
    tabulate a different target than the runs were made with)."""
    return next((t for t, acc in s.get("accuracy_curve") or [] if t is not None and acc >= target), None)


def median_of(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def ratio(rows: dict, factor: float, mode: str, ref: str, key: Any, repeats: int) -> float | None:
    out = []
    for rep in range(repeats):
        a, b = rows.get((factor, mode, rep)), rows.get((factor, ref, rep))
        if a and b and key(a) is not None and key(b):
            out.append(key(a) / key(b))
    return median_of(out)


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-resnet"))
    parser.add_argument("--factors", type=float, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--steps", type=int, default=150, help="steps per worker on average")
    parser.add_argument("--target", type=float, default=0.8, help="test accuracy for time-to-accuracy")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--reuse", action="store_true", help="only tabulate the runs already in --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = 5000
    overrides = {
        "model.name": args.model, "data.name": "synthetic-cifar", "data.synthetic_size": images,
        "train.steps": args.steps, "train.target_accuracy": args.target, "train.eval_interval": 2.0,
        "optim.lr": 0.05, "optim.warmup_steps": 20,
    }  # fmt: skip
    scenarios = {f: scenario_file(args.out, f) for f in args.factors}
    if not args.reuse:

        def show(cell: Cell, summary: dict | None, failure: str | None) -> None:
            what = failure or f"acc {summary['final_accuracy']:.3f}, {summary['steps_per_s']:.1f} steps/s"
            print(f"{cell.name}: {what}", flush=True)

        run_matrix(list(scenarios.values()), MODES, args.repeats, args.out, overrides, show)
    rows = load_rows(args.out, scenarios, args.repeats)
    epoch = lambda s: epoch_seconds(s, images)  # noqa: E731
    tta = lambda s: time_to(s, args.target)  # noqa: E731
    lines = [
        f"| worker 1 slowdown | mode | time per epoch (s) | time to {args.target:.0%} (s) | final accuracy "
        "| epoch time ÷ bsp | time to acc. ÷ bsp | time to acc. ÷ DDP |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    curves: dict[str, dict[str, list]] = {}
    for factor in args.factors:
        for mode in MODES:
            runs = [rows[(factor, mode, r)] for r in range(args.repeats) if (factor, mode, r) in rows]
            if not runs:
                continue
            e, t = median_of([epoch(s) for s in runs]), median_of([tta(s) for s in runs])
            acc = median_of([s.get("final_accuracy") for s in runs])
            cells = [e, t, acc, ratio(rows, factor, mode, "bsp", epoch, args.repeats),
                     ratio(rows, factor, mode, "bsp", tta, args.repeats),
                     ratio(rows, factor, mode, "ddp", tta, args.repeats)]  # fmt: skip
            text = ["–" if v is None else f"{v:.3f}" if i == 2 else f"{v:.2f}" for i, v in enumerate(cells)]
            lines.append(f"| ×{factor:g} | {mode} | " + " | ".join(text) + " |")
            c = curves.setdefault(mode, {"f": [], "epoch": [], "tta": []})
            c["f"].append(factor), c["epoch"].append(e), c["tta"].append(t)
    table = "\n".join(lines)
    (args.out / "resnet.md").write_text(table + "\n")
    print(table)
    plot(curves, args, args.out / "resnet.png")
    print(f"plot: {args.out / 'resnet.png'}")


def plot(curves: dict[str, dict[str, list]], args: argparse.Namespace, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, c in curves.items():
        left.plot(c["f"], [float("nan") if v is None else v for v in c["tta"]], marker="o", label=mode)
        right.plot(c["f"], [float("nan") if v is None else v for v in c["epoch"]], marker="o", label=mode)
    left.set(title=f"{args.model}: time to {args.target:.0%} test accuracy (no point: not reached)", ylabel="seconds")
    right.set(title=f"{args.model}: time per epoch (5,000 images)", ylabel="seconds")
    for ax in (left, right):
        ax.set(xlabel="worker 1 compute slowdown (×)", xscale="log", xticks=args.factors,
               xticklabels=[f"×{f:g}" for f in args.factors])  # fmt: skip
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})


if __name__ == "__main__":
    main()
