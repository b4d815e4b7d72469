"""A model that is not a classifier, with its own metric: least-squares regression on a generated
smooth function, evaluated by test mean squared error (smaller is better), time-to-target on it.

    weaksync run examples/regression.py
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import weaksync


def curve(n: int, seed: int) -> TensorDataset:
    """y = sin(3 x1) + x2² / 2 + noise, x uniform in [-1, 1]²: generated, so nothing is downloaded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    y = torch.sin(3 * x[:, :1]) + 0.5 * x[:, 1:] ** 2 + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def mse(model: nn.Module, test: TensorDataset) -> dict[str, float]:
    x, y = test.tensors
    error = F.mse_loss(model(x), y).item()
    return {"mse": error, "rmse": math.sqrt(error)}


def build_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    model[0].bias.requires_grad_(False)  # a frozen parameter: no server holds it, it stays bit-identical
    return model


def main() -> None:
    model = build_model()
    test = curve(500, seed=1)
    ps = weaksync.connect(model, evaluate=lambda m: mse(m, test), metric="mse", goal="min", target=0.05)
    loader = DataLoader(ps.shard(curve(4000, seed=0)), batch_size=32, shuffle=True)
    while True:
        for x, y in loader:
            if not ps.wait():
                return
            loss = F.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)  # squared errors can spike
            ps.push(loss)


if __name__ == "__main__":
    main()
