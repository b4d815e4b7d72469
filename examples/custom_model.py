"""Train your own model and dataset with weaksync (Python API), here in `partial` mode.

    python examples/custom_model.py --steps 200

Anything picklable works: module-level functions (or functools.partial of them) that build the
model and return (train, test) datasets; every server, worker and the evaluator call them.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import TensorDataset

import weaksync


class TwoMoonsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_model() -> nn.Module:
    return TwoMoonsMLP()


def make_data() -> tuple[TensorDataset, TensorDataset]:
    """Two interleaved half-moons (scikit-learn), a classic non-linear toy problem."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=3000, noise=0.1, random_state=0)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return TensorDataset(x[:2400], y[:2400]), TensorDataset(x[2400:], y[2400:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="partial")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out-dir", default="runs")
    args = parser.parse_args()
    result = weaksync.train(
        make_model,
        make_data,
        overrides={
            "sync.mode": args.mode,
            "train.steps": args.steps,
            "run.out_dir": args.out_dir,
            "cluster.workers": 3,
            "cluster.servers": 2,
            "optim.lr": 0.1,
            "train.target_accuracy": 0.95,
        },
    )
    s = result.summary
    print(f"final accuracy {s['final_accuracy']:.3f}, {s['steps_per_s']:.0f} worker steps/s, run in {result.run_dir}")


if __name__ == "__main__":
    main()
