"""SyncPolicy presets (DESIGN.md §2 table), count/fraction resolution and validation messages."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weaksync.core import MODES, SyncPolicy, make_policy, resolve_count
from weaksync.core.policy import within_staleness


def test_modes_are_the_design_table() -> None:
    assert MODES == ("auto", "bsp", "backup", "partial-pull", "partial", "ssp", "async")


def test_auto_starts_as_bsp_and_takes_k_and_b_as_its_lowest_quorums() -> None:
    p = make_policy("auto", 4, 6)
    assert (p.k, p.b, p.tau, p.auto, p.k_min, p.b_min, p.grace) == (4, 6, 1, True, 1, 1, 0.5)
    p = make_policy("auto", 8, 6, k=0.5, b=2)
    assert (p.k, p.b, p.k_min, p.b_min) == (8, 6, 4, 2)
    with pytest.raises(ValueError, match="auto needs tau >= 1"):
        make_policy("auto", 4, 4, tau=0)


@pytest.mark.parametrize(("n", "nb"), [(1, 1), (3, 4), (8, 10)])
def test_bsp_waits_for_everyone_with_no_staleness(n: int, nb: int) -> None:
    p = make_policy("bsp", n, nb)
    assert (p.k, p.b, p.tau) == (n, nb, 0)
    assert p.push_deadline is None and p.pull_deadline is None and p.ssp_slack is None
    assert not p.immediate_pull and p.wait_for_pull and p.weighting == "none"


@pytest.mark.parametrize(("n", "backups"), [(4, 1), (10, 4), (3, 2)])
def test_backup_is_n_minus_c_with_full_pull(n: int, backups: int) -> None:
    p = make_policy("backup", n, 6, backups=backups)
    assert (p.k, p.b, p.tau) == (n - backups, 6, 0)


def test_backup_never_goes_below_one() -> None:
    assert make_policy("backup", 2, 4, backups=5).k == 1


@pytest.mark.parametrize(("nb", "rho"), [(4, 0.5), (10, 0.3), (7, 0.5), (5, 1.0), (3, 0.01)])
def test_partial_pull_is_ceil_rho_b_with_tau_at_least_one(nb: int, rho: float) -> None:
    p = make_policy("partial-pull", 5, nb, pull_fraction=rho)
    assert p.k == 5
    assert p.b == max(1, math.ceil(rho * nb))
    assert p.tau is not None and p.tau >= 1


def test_partial_combines_backup_and_partial_pull() -> None:
    p = make_policy("partial", 8, 10, backups=2, pull_fraction=0.3)
    assert (p.k, p.b) == (6, 3)
    assert p.tau is not None and p.tau >= 1


def test_ssp_pushes_with_k_one_and_bounds_clocks() -> None:
    p = make_policy("ssp", 4, 6, ssp_slack=2)
    assert (p.k, p.b, p.tau, p.ssp_slack) == (1, 6, None, 2)
    assert make_policy("ssp", 4, 6).ssp_slack == 3  # documented default
    assert not p.immediate_pull and p.wait_for_pull


def test_async_answers_at_once_and_never_waits_for_fresh_blocks() -> None:
    p = make_policy("async", 4, 6)
    assert (p.k, p.b, p.tau) == (1, 6, None)
    assert p.immediate_pull and not p.wait_for_pull
    assert p.ssp_slack is None


@pytest.mark.parametrize("mode", ["bsp", "backup", "partial-pull", "partial", "async"])
def test_only_ssp_has_a_clock_bound(mode: str) -> None:
    assert make_policy(mode, 4, 4, ssp_slack=1).ssp_slack is None


def test_explicit_thresholds_override_the_preset() -> None:
    p = make_policy("bsp", 4, 8, k=2, b=0.5, tau=3)
    assert (p.k, p.b, p.tau) == (2, 4, 3)
    p = make_policy("partial", 10, 10, k=0.8, b=3)
    assert (p.k, p.b) == (8, 3)


def test_deadlines_and_weighting_pass_through() -> None:
    p = make_policy("partial", 4, 4, push_deadline=0.5, pull_deadline=1.5, weighting="inverse")
    assert (p.push_deadline, p.pull_deadline, p.weighting) == (0.5, 1.5, "inverse")


@given(st.sampled_from(MODES), st.integers(1, 64), st.integers(1, 64), st.floats(0.01, 1.0), st.integers(0, 70))
@settings(max_examples=150, deadline=None)
def test_every_preset_is_valid(mode: str, n: int, nb: int, rho: float, backups: int) -> None:
    p = make_policy(mode, n, nb, pull_fraction=rho, backups=backups)
    assert 1 <= p.k <= n and 1 <= p.b <= nb
    assert p.tau is None or p.tau >= 0


# -- resolve_count -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        (1, 5, 1),
        (5, 5, 5),
        (3, 7, 3),
        (0.5, 4, 2),
        (0.3, 10, 3),
        (0.25, 10, 3),
        (1.0, 7, 7),
        (1e-6, 5, 1),
        (0.1, 30, 3),
        (0.7, 10, 7),
        (0.2, 15, 3),
    ],
)
def test_resolve_count_counts_and_fractions(value: int | float, total: int, expected: int) -> None:
    assert resolve_count(value, total, "k") == expected


def test_one_point_zero_is_a_fraction_but_one_is_a_count() -> None:
    assert resolve_count(1.0, 6, "b") == 6
    assert resolve_count(1, 6, "b") == 1


@pytest.mark.parametrize("value", [0, -1, 6, 0.0, -0.5, 1.5, True, "2", None])
@pytest.mark.parametrize("name", ["k", "b"])
def test_resolve_count_rejects_with_the_field_name(value: object, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        resolve_count(value, 5, name)  # type: ignore[arg-type]


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(k=0), "k"),
        (dict(k=5), "k"),
        (dict(k=2.0), "k"),
        (dict(b=0), "b"),
        (dict(b=9), "b"),
        (dict(b=-0.1), "b"),
        (dict(tau=-1), "tau"),
        (dict(push_deadline=0.0), "push_deadline"),
        (dict(push_deadline=-1.0), "push_deadline"),
        (dict(pull_deadline=0.0), "pull_deadline"),
        (dict(pull_deadline=-2.0), "pull_deadline"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        make_policy("partial", 4, 8, **kwargs)


def test_negative_ssp_slack_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"ssp_slack"):
        make_policy("ssp", 4, 8, ssp_slack=-1)


def test_unknown_mode_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown mode 'sync'.*bsp, backup, partial-pull, partial, ssp, async"):
        make_policy("sync", 4, 8)


def test_sync_policy_checks_itself() -> None:
    with pytest.raises(ValueError, match=r"k=4 must be between 1 and the number of workers 3"):
        SyncPolicy("bsp", num_workers=3, num_blocks=2, k=4, b=2, tau=0)
    with pytest.raises(ValueError, match=r"b=0"):
        SyncPolicy("bsp", num_workers=3, num_blocks=2, k=3, b=0, tau=0)


@pytest.mark.parametrize(
    ("tau", "block", "base", "ok"),
    [(None, 100, 0, True), (0, 3, 3, True), (0, 3, 2, False), (2, 5, 3, True), (2, 5, 2, False)],
)
def test_accepts_is_the_staleness_bound(tau: int | None, block: int, base: int, ok: bool) -> None:
    p = make_policy("backup", 2, 2, tau=tau) if tau is not None else make_policy("async", 2, 2)
    assert within_staleness(p.tau, block, base) is ok
