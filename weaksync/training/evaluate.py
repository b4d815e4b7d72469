"""Held-out evaluation that leaves the model's train/eval flags exactly as it found them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1]."""
    return evaluate_loss_and_accuracy(model, dataset, batch_size)[1]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for a measurement; every module's train/eval flag is restored afterwards,
    whatever the measurement did with them."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def evaluate_loss_and_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) under no_grad and eval mode."""
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size}: raise it")
    device = _model_device(model)
    total_loss, correct, count = 0.0, 0, 0
    with eval_mode(model):
        for x, y in _batches(dataset, batch_size):
            x, y = x.to(device), y.to(device).long()
            logits = model(x)
            total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            count += int(y.numel())
    if count == 0:
        raise ValueError("evaluate: the dataset is empty: pass a non-empty test set")
    return total_loss / count, correct / count


def _model_device(model: nn.Module) -> torch.device:
    """Where the inputs must go: the first parameter's (or buffer's) device, else CPU."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Slice TensorDataset tensors directly (fast); otherwise a plain sequential DataLoader."""
    if isinstance(dataset, TensorDataset):
        x_all, y_all = dataset.tensors[0], dataset.tensors[1]
        for start in range(0, len(x_all), batch_size):
            yield x_all[start : start + batch_size], y_all[start : start + batch_size]
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for x, y in loader:
        yield x, torch.as_tensor(y)
