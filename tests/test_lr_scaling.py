"""The learning rate of an update that averaged m gradients, under each `optim.lr_scaling` rule, and the
server applying it: a full backup quorum steps with `optim.lr`, async steps with lr/N."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from weaksync.config import OptimSection, load_config
from weaksync.core import Accept, Apply
from weaksync.runtime.blockstore import BlockStore
from weaksync.runtime.flat import block_values, model_layout
from weaksync.training.optim import lr_function, lr_scale, optimizer_factory, switch_ramp


def test_the_default_rule_is_auto() -> None:
    assert load_config(None, {}).optim.lr_scaling == "auto"


@pytest.mark.parametrize(
    ("rule", "m", "n", "k", "expected"),
    [
        ("linear", 3, 4, 3, 0.75),  # backup 3 of 4: Goyal's rule counts against all N workers
        ("quorum", 3, 4, 3, 1.0),  # ... the quorum rule against the quorum
        ("quorum", 2, 4, 3, 2 / 3),  # a push deadline cut the round to 2 of 3
        ("none", 2, 4, 3, 1.0),
        ("auto", 3, 4, 3, 1.0),  # backup: a full quorum gets the configured lr
        ("auto", 2, 4, 3, 2 / 3),
        ("auto", 4, 4, 4, 1.0),  # bsp
        ("auto", 1, 4, 1, 0.25),  # async and ssp: one gradient gets lr/N
        ("auto", 2, 4, 2, 2 / 3),  # k = 2 of 4: no more per sample than a backup quorum (3 of 4) gets
        ("auto", 2, 8, 4, 2 / 7),
        ("auto", 1, 1, 1, 1.0),  # one worker: every rule is plain SGD
    ],
)
def test_each_rule(rule: str, m: int, n: int, k: int, expected: float) -> None:
    assert lr_scale(rule, m, n, k) == pytest.approx(expected)


@given(n=st.integers(1, 64), data=st.data())
def test_scales_stay_in_range_and_bsp_always_gets_the_full_rate(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    m = data.draw(st.integers(1, n))
    for rule in ("auto", "quorum", "linear", "none"):
        scale = lr_scale(rule, m, n, k)
        assert 0 < scale <= 1
        assert lr_scale(rule, n, n, n) == 1.0  # bsp: every rule leaves lr alone
    assert lr_scale("auto", m, n, k) >= lr_scale("linear", m, n, k)  # auto never steps smaller than linear


def test_config_names_the_choices_on_a_bad_rule() -> None:
    with pytest.raises(ValueError, match="lr_scaling"):
        load_config(None, {"optim.lr_scaling": "sqrt"})


def one_update(rule: str, contributors: int, num_workers: int, quorum: int) -> float:
    """The step a BlockStore takes on a one-parameter model, gradient 1, plain SGD at lr 0.1."""
    cfg = OptimSection(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", lr_scaling=rule)
    model = nn.Linear(1, 1, bias=False)
    layout = model_layout(model, 1, 1)
    store = BlockStore(
        layout,
        0,
        block_values(model, layout, layout.blocks_of(0)),
        optimizer_factory(cfg),
        lr_function(cfg, 10, num_workers, quorum),
    )
    before = store.snapshot(0).clone()
    for w in range(contributors):
        store.accept(Accept(w, 0, 0, 0, 1.0), torch.ones(1))
    store.apply(Apply(0, 1, tuple((w, 0, 1.0) for w in range(contributors)), 1, False))
    return float(before - store.snapshot(0))


def test_the_server_steps_a_full_backup_quorum_with_the_configured_lr() -> None:
    assert one_update("auto", contributors=3, num_workers=4, quorum=3) == pytest.approx(0.1)
    assert one_update("linear", contributors=3, num_workers=4, quorum=3) == pytest.approx(0.075)


def test_the_server_steps_one_async_gradient_with_lr_over_n() -> None:
    assert one_update("auto", contributors=1, num_workers=4, quorum=1) == pytest.approx(0.025)


def test_after_the_synchronous_warm_up_the_lr_climbs_back_over_as_many_steps() -> None:
    """ssp/async switched at step 32: the LR restarts at 1/32 of its value and is whole again at step 63."""
    assert [switch_ramp(s, 32) for s in (0, 31)] == [1.0, 1.0]  # the warm-up itself runs as bsp
    assert switch_ramp(32, 32) == pytest.approx(1 / 32) and switch_ramp(47, 32) == pytest.approx(0.5)
    assert switch_ramp(63, 32) == 1.0 and switch_ramp(500, 32) == 1.0
    assert all(switch_ramp(s, 0) == 1.0 for s in range(5))  # no warm-up, no ramp
    cfg = OptimSection(name="sgd", lr=0.1, schedule="constant")
    assert lr_function(cfg, 100, 4, 1, 32)(40, 1) == pytest.approx(0.1 / 4 * 9 / 32)
