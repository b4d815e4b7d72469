"""Momentum correction: staleness acts as momentum of its own (Mitliagkas et al. 2016), so the servers' SGD
momentum is lowered while accepted gradients are stale, and left alone when they are not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weaksync.config import OptimSection, load_config
from weaksync.core import Accept, Apply, ServerCore, make_policy
from weaksync.runtime.blockstore import BlockStore
from weaksync.runtime.flat import block_values, model_layout
from weaksync.training.optim import (
    corrected_momentum,
    lr_function,
    momentum_function,
    momentum_into_lr,
    optimizer_factory,
)


@pytest.mark.parametrize(
    ("staleness", "expected"),
    [(0.0, 0.9), (1.0, 0.8), (3.0, 0.6), (9.0, 0.0), (20.0, 0.0)],  # async with N = 4 has s ≈ 3
)
def test_total_momentum_stays_the_configured_one(staleness: float, expected: float) -> None:
    assert corrected_momentum(0.9, staleness)[0] == pytest.approx(expected)


@pytest.mark.parametrize("staleness", [0.5, 1.0, 3.0, 9.0])
def test_ssp_and_async_move_the_momentum_into_the_lr(staleness: float) -> None:
    """k = 1: no momentum on stale gradients, each moving θ as far as heavy-ball momentum would (lr/(1 - μ))."""
    momentum, factor = momentum_into_lr(0.9, staleness)
    assert momentum == 0.0 and 0.05 * factor == pytest.approx(0.05 / (1 - 0.9))
    assert momentum_into_lr(0.9, 0.0) == (0.9, 1.0)
    assert corrected_momentum(0.9, staleness)[1] == 1.0
    cfg = OptimSection(momentum=0.9)
    assert momentum_function(cfg, 1).func is momentum_into_lr  # type: ignore[union-attr]
    assert momentum_function(cfg, 3).func is corrected_momentum  # type: ignore[union-attr]


def test_no_correction_without_sgd_momentum_or_when_switched_off() -> None:
    assert momentum_function(OptimSection(momentum=0.0), 1) is None
    assert momentum_function(OptimSection(name="adam"), 1) is None
    assert momentum_function(OptimSection(momentum_correction=False), 1) is None
    assert load_config(None, {}).optim.momentum_correction is True


def test_the_server_core_reports_the_staleness_of_what_it_accepts() -> None:
    core = ServerCore(make_policy("async", 2, 1), [0])
    for _ in range(5):
        core.on_push(0, 0, core.version(0), 0, 0.0)  # fresh
    assert core.staleness == 0.0
    applies = [a for _ in range(200) for a in core.on_push(1, 0, core.version(0) - 3, 0, 0.0) if isinstance(a, Apply)]
    assert applies[-1].staleness == pytest.approx(3.0, abs=0.1)


def one_block_store() -> BlockStore:
    """One scalar parameter under SGD lr 0.1, momentum 0.9, with the quorum modes' momentum correction."""
    cfg = OptimSection(lr=0.1, momentum=0.9, weight_decay=0.0, schedule="constant")
    model = nn.Linear(1, 1, bias=False)
    layout = model_layout(model, 1, 1)
    return BlockStore(
        layout, 0, block_values(model, layout, layout.blocks_of(0)), optimizer_factory(cfg),
        lr_function(cfg, 10, 1, 1), momentum_function(cfg, 2),
    )  # fmt: skip


def test_the_block_store_steps_with_the_corrected_momentum() -> None:
    store = one_block_store()
    for version, staleness in ((1, 3.0), (2, 3.0)):
        store.accept(Accept(0, 0, 0, version - 1, 1.0), torch.ones(1))
        store.apply(Apply(0, version, ((0, 0, 1.0),), version, False, staleness))
    group = store.optimizer.param_groups[0]
    assert group["momentum"] == pytest.approx(0.6) and group["lr"] == pytest.approx(0.1)
    buf = store.block_state(0)["momentum_buffer"]
    assert float(buf) == pytest.approx(1 + 0.6)  # second step: buf = μ'·1 + 1


def test_momentum_lowered_to_zero_comes_back_when_staleness_falls() -> None:
    store = one_block_store()
    group = store.optimizer.param_groups[0]
    for version, staleness in ((1, 20.0), (2, 0.0)):
        store.accept(Accept(0, 0, 0, version - 1, 1.0), torch.ones(1))
        store.apply(Apply(0, version, ((0, 0, 1.0),), version, False, staleness))
        if version == 1:
            assert group["momentum"] == 0.0 and group["lr"] == pytest.approx(0.1)
    assert group["momentum"] == pytest.approx(0.9) and group["lr"] == pytest.approx(0.1)
