"""Build the servers' torch.optim optimizer and LR function from the config."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..config import OptimSection
from .schedule import lr_at


def make_optimizer(cfg: OptimSection, params: list[nn.Parameter], foreach: bool | None = None) -> torch.optim.Optimizer:
    """`foreach`: torch's multi-tensor step (None: torch's default, which on CPU is one tensor at a time)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            foreach=foreach,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=foreach)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=foreach)


def optimizer_factory(cfg: OptimSection):
    """A server's optimizer over its blocks' parameters: one multi-tensor step per batch of updates, which on
    CPU is 4-5× faster than torch's default at 128 blocks."""
    return partial(make_optimizer, cfg, foreach=True)


def lr_function(cfg: OptimSection, total_steps: int, num_workers: int, quorum: int):
    """LR of one update: the schedule at the contributors' step, times the scale `lr_scale` gives an update
    that averaged m gradients (the update stands for m·batch samples)."""
    return partial(_update_lr, cfg, total_steps, num_workers, quorum)


def lr_scale(rule: str, contributors: int, num_workers: int, quorum: int) -> float:
    """How much of `optim.lr` an update that averaged `contributors` gradients gets.

    linear: m/N, relative to a synchronous step of all N workers (Goyal et al. 2017).
    quorum: m/k, relative to a full quorum: a full quorum gets `optim.lr`, as with TensorFlow's
      SyncReplicasOptimizer when it aggregates fewer replicas than it has (backup workers); an update that
      the push deadline or departed workers cut short gets proportionally less.
    none: always 1.
    auto: quorum when k > 1, linear when k = 1 (ssp, async): there every gradient is an update, N of them
      per synchronous step's worth of samples, and at the full rate half of the digits runs collapsed. The
      quorum rule gives each sample N/k times bsp's rate; auto caps that at a backup quorum's N/(N - 1),
      the largest measured good: at k = 2 of 4 (auto under spikes) twice the rate made digits diverge.
    """
    if rule == "auto":
        if quorum == 1:
            return lr_scale("linear", contributors, num_workers, quorum)
        return min(lr_scale("quorum", contributors, num_workers, quorum), contributors / max(1, num_workers - 1))
    if rule == "linear":
        return contributors / num_workers
    if rule == "quorum":
        return min(1.0, contributors / quorum)
    return 1.0


def momentum_function(cfg: OptimSection, quorum: int) -> Callable[[float], tuple[float, float]] | None:
    """The servers' SGD momentum at a given staleness, and the factor on the LR that goes with it; None: the
    optimizer's own, unchanged. `quorum` is the policy's k: with k = 1 (ssp, async) staleness is inherent."""
    if cfg.name != "sgd" or cfg.momentum == 0 or not cfg.momentum_correction:
        return None
    if quorum == 1:
        return partial(momentum_into_lr, cfg.momentum)
    return partial(corrected_momentum, cfg.momentum)


STALE_GRADIENT_CLIP = 2.0  # ssp/async: a block's gradient is clipped at this × its moving-average norm


def gradient_clip(quorum: int, num_workers: int) -> float | None:
    """The servers' clip bound (× a block's recent gradient norm), or None: only where every gradient is an
    update and stale by design (k = 1 of several workers: ssp, async), whose switch out of the synchronous
    warm-up can run away (docs/results.md, "`ssp` and `async` at the end of their warm-up")."""
    return STALE_GRADIENT_CLIP if quorum == 1 < num_workers else None


def corrected_momentum(momentum: float, staleness: float) -> tuple[float, float]:
    """(μ', 1) once asynchrony adds momentum of its own (Mitliagkas et al. 2016, "Asynchrony begets
    momentum"): gradients s versions old act like momentum s/(1+s) on top of the optimizer's. Choosing μ' so
    that (1 - μ')(1 - s/(1+s)) = 1 - μ keeps the total at the configured μ: μ' = 1 - (1-μ)(1+s), at least 0.
    With no staleness (bsp, backup, or partial modes when nothing is slow) μ' = μ."""
    if staleness <= 0:
        return momentum, 1.0
    return max(0.0, 1.0 - (1.0 - momentum) * (1.0 + staleness)), 1.0


def momentum_into_lr(momentum: float, staleness: float) -> tuple[float, float]:
    """(0, 1/(1 - μ)) while the accepted gradients are stale: plain SGD, each gradient moving θ as far as
    heavy-ball momentum would in the end (lr/(1 - μ)).

    For ssp and async, where every gradient is a few versions old by design. Measured on ResNet-20 (N = 4,
    s ≈ 3, docs/results.md): momentum 0.9 ended at 0.23, Mitliagkas's 0.6 at 0.34 (0.35 with the LR scaled
    to keep lr/(1 - μ)), no momentum at lr/(1 - μ) at 0.63-0.64, against 0.67 for bsp. Stale gradients fed
    into a momentum buffer keep pushing in a direction θ has already left."""
    if staleness <= 0:
        return momentum, 1.0
    return 0.0, 1.0 / (1.0 - momentum)


def _update_lr(
    cfg: OptimSection,
    total_steps: int,
    num_workers: int,
    quorum: int,
    step: int,
    contributors: int,
    in_force: int | None = None,
) -> float:
    """`in_force`: the quorum of this update when it differs from the run's (auto); None: `quorum`."""
    lr = lr_at(
        step,
        base_lr=cfg.lr,
        total_steps=total_steps,
        schedule=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        step_size=cfg.step_size,
        gamma=cfg.gamma,
    )
    return lr * lr_scale(cfg.lr_scaling, contributors, num_workers, quorum if in_force is None else in_force)
