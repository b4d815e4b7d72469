"""Python API: train your own nn.Module and Dataset with weaksync, in any mode, without editing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F

from .config import Config, load_config
from .runtime.launcher import ProgressCallback, RunResult, run_local
from .training.workload import DataFn, LossFn, ModelFn, Workload


def train(
    model_fn: ModelFn | None = None,
    data_fn: DataFn | None = None,
    loss_fn: LossFn = F.cross_entropy,
    config: Config | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Run one training job on the embedded cluster and return its run directory and summary.

    model_fn() -> nn.Module and data_fn() -> (train_dataset, test_dataset) are called in every process,
    so they must be picklable: module-level functions or functools.partial of them. Without them the
    config's built-in model and data are used. `overrides` take dotted keys: {"sync.mode": "partial"}.
    """
    if (model_fn is None) != (data_fn is None):
        raise ValueError("give both model_fn and data_fn, or neither (to use config.model / config.data)")
    if isinstance(config, Config):
        cfg = load_config(None, {**config.model_dump(), **(overrides or {})}) if overrides else config
    else:
        cfg = load_config(config, overrides)
    workload = None
    if model_fn is not None and data_fn is not None:
        workload = Workload(model_fn=model_fn, data_fn=data_fn, loss_fn=loss_fn)
        cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(update={"name": getattr(model_fn, "__name__", "custom")}),
                "data": cfg.data.model_copy(update={"name": getattr(data_fn, "__name__", "custom")}),
            }
        )
    return run_local(cfg, workload, on_progress=on_progress)
