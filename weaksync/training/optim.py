"""Build the servers' torch.optim optimizer and LR function from the config."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..config import OptimSection
from .schedule import lr_at


def make_optimizer(cfg: OptimSection, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_factory(cfg: OptimSection):
    return partial(make_optimizer, cfg)


def lr_function(cfg: OptimSection, total_steps: int, num_workers: int):
    """LR of one update: the schedule at the contributors' step, times m/N for an update that averaged
    m of N workers' gradients under linear scaling (the update stands for m·batch samples, not N·batch)."""
    return partial(_update_lr, cfg, total_steps, num_workers)


def _update_lr(cfg: OptimSection, total_steps: int, num_workers: int, step: int, contributors: int) -> float:
    lr = lr_at(
        step,
        base_lr=cfg.lr,
        total_steps=total_steps,
        schedule=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        step_size=cfg.step_size,
        gamma=cfg.gamma,
    )
    return lr * contributors / num_workers if cfg.lr_scaling == "linear" else lr
