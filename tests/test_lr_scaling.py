"""The learning rate of an update that averaged m gradients, under each `optim.lr_scaling` rule, and the
server applying it: a full backup quorum steps with `optim.lr`, async steps with lr/N."""

from __future__ import annotations

import pytest
import torch
from conftest import linear_store
from hypothesis import given
from hypothesis import strategies as st

from weaksync.config import OptimSection, load_config
from weaksync.core import Accept, Apply
from weaksync.training.optim import lr_scale


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
    store = linear_store(cfg, 1, num_workers, quorum)
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
