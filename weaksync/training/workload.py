"""A workload = how to build the model and the data in any process. Factories, not objects, so every
process builds the same model from the same seed and each worker loads only what it reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

ModelFn = Callable[[], nn.Module]
DataFn = Callable[[], tuple[Dataset, Dataset]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seed_model_init(seed: int) -> None:
    """Seed the CPU generator that initialises models, identically on every rank.

    Not torch.manual_seed: it is wrapped in a dynamo guard whose first call imports torch._dynamo,
    5–10 s of CPU on a small machine, in every process of a run."""
    torch.default_generator.manual_seed(seed)


@dataclass(frozen=True)
class Workload:
    """`model_fn()` builds the model (called after torch.manual_seed(seed) on every rank);
    `data_fn()` returns (train, test) datasets; `loss_fn(output, target)` is minimised.
    All three must be picklable (module-level functions or functools.partial of them)."""

    model_fn: ModelFn
    data_fn: DataFn
    loss_fn: LossFn = field(default=F.cross_entropy)


def _builtin_model(model: str, dataset: str, data_dir: str | None) -> nn.Module:
    from .models import build_model
    from .sources import dataset_info

    info = dataset_info(dataset, data_dir)
    return build_model(model, info.num_classes, info.in_channels, info.image_size)


def _builtin_data(dataset: str, data_dir: str | None, seed: int, synthetic_size: int) -> tuple[Dataset, Dataset]:
    from .data import load_dataset

    train, test, _ = load_dataset(dataset, data_dir, seed=seed, synthetic_size=synthetic_size)
    return train, test


def builtin_workload(model: str, dataset: str, data_dir: str | None, seed: int, synthetic_size: int) -> Workload:
    from functools import partial

    return Workload(
        model_fn=partial(_builtin_model, model, dataset, data_dir),
        data_fn=partial(_builtin_data, dataset, data_dir, seed, synthetic_size),
    )
