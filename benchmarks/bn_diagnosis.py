"""Why BatchNorm ResNets fail under partial pull and async: the final model evaluated three ways.

    python benchmarks/bn_diagnosis.py runs/<run> [runs/<run> ...]

For each run directory (its `final_model.pt` and `config.yaml`) prints test accuracy
- eval: eval mode with the running statistics the servers averaged (what the run reports);
- batch: train mode, each test batch of the run's batch size normalised by its own statistics;
- recomputed: eval mode after recomputing the statistics on 2,048 training images with the final weights
  (PreciseBN, with `torch.optim.swa_utils.update_bn`).
If `recomputed` and `batch` are high while `eval` is low, the weights are fine and the averaged statistics
are what fails; if all three are low, the weights themselves did not learn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from weaksync.config import load_config
from weaksync.runtime.evaluator import FINAL_MODEL
from weaksync.training.evaluate import evaluate_loss_and_accuracy
from weaksync.training.workload import builtin_workload, seed_model_init


def batch_stat_accuracy(model: torch.nn.Module, test, batch_size: int) -> float:
    x, y = test.tensors[0], test.tensors[1]
    model.train()
    correct = 0
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(y)


def diagnose(run_dir: Path) -> dict[str, float]:
    cfg = load_config(run_dir / "config.yaml")
    work = builtin_workload(cfg.model.name, cfg.data.name, cfg.data.dir, cfg.run.seed, cfg.data.synthetic_size)
    seed_model_init(cfg.run.seed)
    model = work.model_fn()
    model.load_state_dict(torch.load(run_dir / FINAL_MODEL))
    train, test = work.data_fn()
    out = {"eval": evaluate_loss_and_accuracy(model, test)[1]}
    out["batch"] = batch_stat_accuracy(model, test, cfg.train.batch_size)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.run.seed))[:2048]
    torch.optim.swa_utils.update_bn(train.tensors[0][order].split(256), model)
    out["recomputed"] = evaluate_loss_and_accuracy(model, test)[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    print("| run | eval (averaged statistics) | train-mode batch statistics | recomputed statistics |")
    print("| --- | --- | --- | --- |")
    for run in args.runs:
        r = diagnose(run)
        print(f"| {run.name} | {r['eval']:.3f} | {r['batch']:.3f} | {r['recomputed']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
