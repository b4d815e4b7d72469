"""BatchNorm statistics recomputed on the weights they go with (PreciseBN, Wu & Johnson 2021).

A parameter server averages the running statistics its workers push, but each worker's statistics are an
exponential average over the many versions of the weights it ran, fresh and stale blocks mixed. Under
partial pull and async that average no longer matches the weights it is stored with. Recomputing the
statistics in train mode over a few training batches, with the weights frozen, makes them match again.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import Dataset

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, NORM_TYPES) and m.track_running_stats for m in model.modules())


def recalibration_batches(dataset: Dataset, num_samples: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """A fixed random subset of the training inputs, in batches: the same for every snapshot of a run, so
    accuracies over time differ only by the weights."""
    count = min(num_samples, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        x = tensors[0][order]
    else:
        x = torch.stack([torch.as_tensor(dataset[i][0]) for i in order])
    return list(x.split(batch_size))


def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Replace every BatchNorm's running mean and variance by their cumulative average over `batches`,
    computed with the model's current weights (torch.optim.swa_utils.update_bn does the same over a loader)."""
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES) and m.track_running_stats]
    if not norms:
        return
    saved = {m: m.momentum for m in norms}
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, not an exponential one
    model.train()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        model.train(was_training)
