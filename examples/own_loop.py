"""Your own training loop with weaksync: your model, data, loss and gradient clipping; weaksync's servers
hold θ and step the optimizer, in whatever mode the run uses.

    weaksync run examples/own_loop.py                      # embedded cluster: 2 servers, 4 workers
    weaksync run examples/own_loop.py --mode bsp --steps 300
    torchrun --standalone --nproc-per-node 7 examples/own_loop.py   # the same script: servers, workers, evaluator

Against a DDP script, three calls change: `ps = weaksync.connect(model, evaluate=...)` instead of wrapping
the model, `ps.wait()` before the forward pass, and `ps.push()` instead of `optimizer.step()`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import weaksync


def digits() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8×8 digits (shipped with it), scaled to [0, 1], 1,500 to train and 297 to test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """A custom loss: cross-entropy against targets smoothed toward the uniform distribution."""
    logp = F.log_softmax(logits, dim=1)
    target = torch.full_like(logp, smoothing / (logits.shape[1] - 1))
    target.scatter_(1, y[:, None], 1.0 - smoothing)
    return -(target * logp).sum(dim=1).mean()


def accuracy(model: nn.Module, test: TensorDataset) -> dict[str, float]:
    """The run's metric, measured by the evaluator on the servers' θ (weaksync puts the model in eval mode)."""
    x, y = test.tensors
    logits = model(x)
    return {"accuracy": (logits.argmax(1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item()}


def build_model() -> nn.Module:
    torch.manual_seed(0)  # torchrun: every process builds the same model (weaksync run seeds it already)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def main() -> None:
    model = build_model()
    train, test = digits()
    ps = weaksync.connect(model, evaluate=lambda m: accuracy(m, test), metric="accuracy", target=0.95)
    loader = DataLoader(ps.shard(train), batch_size=ps.config.train.batch_size, shuffle=True)
    while True:
        for x, y in loader:
            if not ps.wait():  # installs the fresh blocks; False once the run's steps are done
                return
            loss = smoothed_cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
            ps.push(loss)


if __name__ == "__main__":
    main()
