"""Delay models against their theory (seeded, with tolerances a wrong formula fails), rules and Delayer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from scipy import stats

from weaksync.stragglers.delays import (
    KINDS,
    ConstantDelay,
    Delayer,
    DelaySpec,
    FailSlowDelay,
    LogNormalDelay,
    ParetoDelay,
    ShiftedExpDelay,
    SpikeDelay,
    StragglerRule,
    TraceDelay,
    delayer_for,
    make_sampler,
)

N = 20_000
P_OK = 1e-3
SPEC = TypeAdapter(DelaySpec)


def draws(spec, seed: int = 1, n: int = N, measured: float = 0.0) -> np.ndarray:
    sampler = make_sampler(spec, seed)
    return np.array([sampler.sample(step, measured) for step in range(n)])


# ------------------------------------------------------------------------------------------ distributions

# (spec, the theoretical distribution, a plausible wrong formula for the same parameters)
CONTINUOUS = {
    "shifted-exp": (
        ShiftedExpDelay(shift=0.5, mean=2.0),
        stats.expon(loc=0.5, scale=2.0),
        lambda rng, n: 0.5 + rng.exponential(1 / 2.0, n),  # mean read as a rate
    ),
    "shifted-exp-no-shift": (
        ShiftedExpDelay(shift=0.0, mean=0.01),
        stats.expon(scale=0.01),
        lambda rng, n: 0.001 + rng.exponential(0.01, n),  # a stray 1 ms shift
    ),
    "lognormal": (
        LogNormalDelay(median=0.005, sigma=0.5),
        stats.lognorm(s=0.5, scale=0.005),
        lambda rng, n: 0.005 * np.exp(0.25 * rng.standard_normal(n)),  # sigma squared used as sigma
    ),
    "lognormal-mean-as-median": (
        LogNormalDelay(median=2.0, sigma=1.0),
        stats.lognorm(s=1.0, scale=2.0),
        lambda rng, n: 2.0 * np.exp(rng.standard_normal(n) - 0.5),  # median read as the mean
    ),
    "pareto": (
        ParetoDelay(scale=0.002, alpha=1.5),
        stats.pareto(b=1.5, scale=0.002),
        lambda rng, n: 0.002 * rng.pareto(1.5, n),  # numpy's Lomax (Pareto II) with minimum 0
    ),
    "pareto-heavy": (
        ParetoDelay(scale=1.0, alpha=0.8),
        stats.pareto(b=0.8, scale=1.0),
        lambda rng, n: rng.random(n) ** (-0.8),  # exponent -alpha instead of -1/alpha
    ),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_model_matches_its_distribution(name):
    spec, dist, _ = CONTINUOUS[name]
    x = draws(spec, seed=7)
    assert np.all(x >= 0) and np.all(np.isfinite(x))
    assert stats.kstest(x, dist.cdf).pvalue > P_OK
    for q in (0.1, 0.5, 0.9):  # quantiles within 3 % (the KS test already bounds them; this names the failure)
        assert np.quantile(x, q) == pytest.approx(dist.ppf(q), rel=0.03)


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_the_distribution_check_rejects_a_wrong_formula(name):
    """The same check on samples of a plausible mistake must fail: the test above has power."""
    _, dist, wrong = CONTINUOUS[name]
    x = wrong(np.random.default_rng(3), N)
    assert stats.kstest(x, dist.cdf).pvalue < P_OK


def test_pareto_minimum_is_scale_and_shifted_exp_minimum_is_shift():
    assert draws(ParetoDelay(scale=0.25, alpha=3.0)).min() >= 0.25
    assert draws(ShiftedExpDelay(shift=0.125, mean=0.5)).min() >= 0.125
    assert draws(LogNormalDelay(median=0.003, sigma=0.0), n=10).tolist() == [0.003] * 10


def test_constant_is_exact_relative_to_measured_or_base():
    s = make_sampler(ConstantDelay(factor=4.0), 0)
    assert s.sample(0, measured=0.01) == pytest.approx(0.03)
    assert s.sample(1, measured=0.0) == 0.0
    assert s.sample(2) == 0.0
    s = make_sampler(ConstantDelay(factor=3.0, seconds=0.5, base=0.2), 0)
    assert [s.sample(i, measured=m) for i, m in enumerate((0.0, 1.0, 99.0))] == [pytest.approx(0.9)] * 3
    assert make_sampler(ConstantDelay(seconds=0.045), 0).sample(5, measured=1.0) == 0.045
    assert make_sampler(ConstantDelay(factor=2.0), 0).sample(0, measured=-1.0) == 0.0  # never negative


def test_spike_rate_and_size():
    p, n = 0.02, 50_000
    x = draws(SpikeDelay(p=p, seconds=0.27, factor=3.0), seed=11, n=n, measured=0.01)
    hits = x > 0
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(hits.sum() - n * p) < 4 * sigma
    assert np.allclose(x[hits], 0.27 + 2 * 0.01)
    assert not draws(SpikeDelay(p=0.0, seconds=1.0)).any()
    assert np.all(draws(SpikeDelay(p=1.0, factor=2.0), n=100, measured=0.5) == 0.5)


def _runs(flags: np.ndarray, value: bool) -> np.ndarray:
    """Lengths of the maximal runs of `value` in a boolean series (the last, unfinished run dropped)."""
    edges = np.flatnonzero(np.diff(np.r_[False, flags == value, False].astype(int)))
    lengths = edges[1::2] - edges[::2]
    return lengths[:-1] if flags[-1] == value else lengths


@pytest.mark.parametrize("p_enter,mean_steps", [(0.2, 5.0), (0.02, 20.0), (0.5, 1.0)])
def test_fail_slow_long_run_fraction_and_episode_length(p_enter, mean_steps):
    n = 200_000
    spec = FailSlowDelay(p_enter=p_enter, mean_steps=mean_steps, factor=3.0, seconds=0.1)
    x = draws(spec, seed=5, n=n, measured=0.05)
    slow = x > 0
    assert np.allclose(x[slow], 2 * 0.05 + 0.1)
    pm = p_enter * mean_steps
    assert slow.mean() == pytest.approx(pm / (1 + pm), abs=0.01)  # wrong conventions are off by >= 0.05
    episodes, normal = _runs(slow, True), _runs(slow, False)
    assert episodes.min() >= 1
    assert episodes.mean() == pytest.approx(mean_steps, rel=0.04)
    assert normal.mean() == pytest.approx(1 / p_enter, rel=0.04)
    if mean_steps == 1.0:
        assert episodes.max() == 1


def test_fail_slow_state_is_a_function_of_the_step():
    spec = FailSlowDelay(p_enter=0.1, mean_steps=8, seconds=1.0)
    every = make_sampler(spec, 9)
    full = [every.sample(s) for s in range(3000)]
    sparse = make_sampler(spec, 9)
    assert [sparse.sample(s) for s in range(0, 3000, 7)] == full[::7]  # skipped steps do not shift episodes
    again = make_sampler(spec, 9)
    assert [again.sample(s) for s in range(50) for _ in range(3)] == [v for v in full[:50] for _ in range(3)]
    late = make_sampler(spec, 9)
    assert late.sample(200_000) in (0.0, 1.0)  # a late first call advances the chain without trouble


def test_fail_slow_never_enters_with_p_zero():
    assert not draws(FailSlowDelay(p_enter=0.0, mean_steps=10, factor=4.0), measured=1.0).any()


# ------------------------------------------------------------------------------------------ reproducibility

RANDOM_SPECS = [
    ShiftedExpDelay(shift=0.0, mean=1.0),
    LogNormalDelay(median=1.0, sigma=1.0),
    ParetoDelay(scale=1.0, alpha=2.0),
    SpikeDelay(p=0.3, seconds=1.0),
    FailSlowDelay(p_enter=0.3, mean_steps=3, seconds=1.0),
]


@pytest.mark.parametrize("spec", RANDOM_SPECS, ids=lambda s: s.kind)
def test_same_seed_same_sequence_different_seed_different(spec):
    a, b, c = draws(spec, 42, n=500), draws(spec, 42, n=500), draws(spec, 43, n=500)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(draws(spec, -42, n=500), a)  # negative seeds work and differ


def test_make_sampler_rejects_non_integer_seeds():
    with pytest.raises(TypeError, match="seed"):
        make_sampler(ConstantDelay(), 1.5)


# ------------------------------------------------------------------------------------------ traces


def write(path, text: str):
    path.write_text(text)
    return str(path)


def test_trace_rows_loop_and_no_loop(tmp_path):
    path = write(tmp_path / "t.csv", "delay,other\n0.1,x\n0.2,y\n\n0.3,z\n")
    looped = make_sampler(TraceDelay(path=path), 0)
    assert [looped.sample(s) for s in range(7)] == [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1]
    assert looped.sample(-1) == 0.0
    once = make_sampler(TraceDelay(path=path, loop=False), 0)
    assert [once.sample(s, measured=5.0) for s in range(5)] == [0.1, 0.2, 0.3, 0.0, 0.0]


def test_trace_with_step_column_and_other_column(tmp_path):
    path = write(tmp_path / "t.csv", "step, wait ,delay\n3,1.5,9\n0,0.25,9\n5,2,9\n")
    s = make_sampler(TraceDelay(path=path, column="wait"), 0)
    assert [s.sample(i) for i in range(6)] == [0.25, 0.0, 0.0, 1.5, 0.0, 2.0]
    assert [s.sample(i) for i in range(6, 12)] == [0.25, 0.0, 0.0, 1.5, 0.0, 2.0]  # period = max step + 1
    s = make_sampler(TraceDelay(path=path, column="wait", loop=False), 0)
    assert [s.sample(i) for i in (5, 6, 100)] == [2.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "text,column,needle",
    [
        (None, "delay", "does not exist"),
        ("", "delay", "is empty"),
        ("delay\n", "delay", "no rows"),
        ("wait\n0.1\n", "delay", "no column 'delay' (header: wait)"),
        ("delay\n0.1\nabc\n", "delay", "line 3: delay='abc'"),
        ("delay\n-0.5\n", "delay", "line 2: delay='-0.5'"),
        ("delay\nnan\n", "delay", "line 2: delay='nan'"),
        ("step,delay\n0,0.1\n0,0.2\n", "delay", "step 0 appears twice"),
        ("step,delay\n1.5,0.1\n", "delay", "step='1.5'"),
        ("step,delay\n-1,0.1\n", "delay", "step='-1'"),
        ("step,delay\n0\n", "delay", "no 'delay' value"),
    ],
)
def test_bad_trace_files_give_one_line_errors_naming_the_file(tmp_path, text, column, needle):
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError) as info:
        make_sampler(TraceDelay(path=str(path), column=column), 0)
    msg = str(info.value)
    assert needle in msg and f"'{path}'" in msg and "\n" not in msg and ":" in msg


# ------------------------------------------------------------------------------------------ spec validation


@pytest.mark.parametrize(
    "doc,field",
    [
        ({"kind": "constant", "factor": 0.5}, "factor"),
        ({"kind": "constant", "seconds": -1}, "seconds"),
        ({"kind": "constant", "base": 0}, "base"),
        ({"kind": "constant", "seconds": float("inf")}, "seconds"),
        ({"kind": "shifted-exp", "shift": 0, "mean": 0}, "mean"),
        ({"kind": "shifted-exp", "shift": -1, "mean": 1}, "shift"),
        ({"kind": "lognormal", "median": 0, "sigma": 1}, "median"),
        ({"kind": "lognormal", "median": 1, "sigma": -1}, "sigma"),
        ({"kind": "lognormal", "median": 1, "sigma": float("nan")}, "sigma"),
        ({"kind": "pareto", "scale": 1, "alpha": 0}, "alpha"),
        ({"kind": "spike", "p": 1.5}, "p"),
        ({"kind": "spike", "p": 0.1, "factor": 0.9}, "factor"),
        ({"kind": "fail-slow", "p_enter": 0.1, "mean_steps": 0.5}, "mean_steps"),
        ({"kind": "fail-slow", "p_enter": -0.1, "mean_steps": 5}, "p_enter"),
        ({"kind": "trace", "path": ""}, "path"),
        ({"kind": "constant", "speed": 2}, "speed"),
    ],
)
def test_delay_specs_reject_bad_values(doc, field):
    with pytest.raises(ValidationError) as info:
        SPEC.validate_python(doc)
    assert info.value.errors()[0]["loc"][-1] == field


def test_delay_spec_union_by_kind():
    assert [type(SPEC.validate_python(d)).__name__ for d in ({"kind": "spike", "p": 0.1}, {"kind": "constant"})] == [
        "SpikeDelay",
        "ConstantDelay",
    ]
    assert KINDS == ("constant", "shifted-exp", "lognormal", "pareto", "spike", "fail-slow", "trace")
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        SPEC.validate_python({"kind": "gamma"})


# ------------------------------------------------------------------------------------------ rules

FIXED = {"kind": "constant", "seconds": 1.0}


def rule(**kw) -> StragglerRule:
    return StragglerRule.model_validate({"target": "worker", "delay": FIXED, **kw})


@pytest.mark.parametrize(
    "doc,needle",
    [
        ({"target": "worker", "bandwidth": 1e6, "delay": FIXED}, "bandwidth applies to links only"),
        ({"target": "server", "bandwidth": 1e6}, "bandwidth applies to links only"),
        ({"target": "link"}, "needs a delay or a bandwidth"),
        ({"target": "worker", "delay": FIXED, "start_step": 5, "end_step": 5}, "end_step=5 must exceed start_step=5"),
        ({"target": "worker", "delay": FIXED, "start_s": 2.0, "end_s": 1.0}, "end_s=1.0 must exceed start_s=2.0"),
        ({"target": "worker", "delay": FIXED, "start_s": -1}, "greater than or equal to 0"),
        ({"target": "worker", "delay": FIXED, "servers": [0]}, "servers names the server end of a link"),
        ({"target": "worker", "delay": FIXED, "ids": []}, "ids is empty"),
        ({"target": "link", "delay": FIXED, "servers": []}, "servers is empty"),
        ({"target": "link", "bandwidth": 0}, "greater than 0"),
        ({"target": "worker", "delay": FIXED, "ids": [-1]}, "greater than or equal to 0"),
        ({"target": "worker", "delay": FIXED, "start_step": -1}, "greater than or equal to 0"),
        ({"target": "gpu", "delay": FIXED}, "'worker', 'server' or 'link'"),
        ({"target": "worker", "delay": FIXED, "id": [1]}, "Extra inputs are not permitted"),
        ({"target": "worker", "delay": FIXED, "ids": "some"}, "ids"),
    ],
)
def test_rule_validation_errors(doc, needle):
    with pytest.raises(ValidationError) as info:
        StragglerRule.model_validate(doc)
    assert needle in str(info.value)


def test_rule_accepts_a_single_id_and_defaults_to_all():
    assert rule(ids=2).ids == [2]
    assert rule().ids == "all" and rule().servers == "all" and rule().end_step is None
    assert StragglerRule(target="link", bandwidth=1e6).delay is None


def test_rules_round_trip_through_json():
    rules = [
        rule(ids=[0, 2], delay={"kind": "fail-slow", "p_enter": 0.1, "mean_steps": 4}, start_step=3, end_step=9),
        StragglerRule(target="link", servers=[1], bandwidth=1e6, delay=TraceDelay(path="t.csv", loop=False)),
    ]
    assert [StragglerRule.model_validate(r.model_dump(mode="json")) for r in rules] == rules


def test_delayer_sums_rules_and_respects_steps():
    rules = [
        rule(delay={"kind": "constant", "seconds": 1.0}),
        rule(delay={"kind": "constant", "factor": 3.0}, start_step=10, end_step=20),
        rule(delay={"kind": "constant", "seconds": 100.0}, start_step=15),
    ]
    d = delayer_for(rules, "worker", 0, seed=0)
    assert d.active
    got = {s: d.sample(s, measured=0.5) for s in (0, 9, 10, 14, 15, 19, 20, 10**6)}
    assert got == {0: 1.0, 9: 1.0, 10: 2.0, 14: 2.0, 15: 102.0, 19: 102.0, 20: 101.0, 10**6: 101.0}


def test_delayer_only_takes_rules_for_its_target_and_id():
    rules = [
        rule(ids=[1, 3], delay={"kind": "constant", "seconds": 1.0}),
        StragglerRule(target="server", ids=[0], delay=ConstantDelay(seconds=10.0)),
        StragglerRule(target="link", ids=[1], bandwidth=1e6),
    ]
    assert [delayer_for(rules, "worker", w, 0).sample(0) for w in range(4)] == [0.0, 1.0, 0.0, 1.0]
    assert not delayer_for(rules, "worker", 0, 0).active
    assert delayer_for(rules, "server", 0, 0).sample(0) == 10.0
    assert not delayer_for(rules, "server", 1, 0).active
    assert not delayer_for(rules, "link", 0, 0, peer=0).active
    assert not delayer_for([], "worker", 0, 0).active
    assert delayer_for([], "worker", 0, 0).sample(3, measured=1.0, nbytes=10) == 0.0


def test_link_rules_match_the_server_end_and_bandwidth_is_exact():
    rules = [
        StragglerRule(target="link", ids="all", servers=[1], bandwidth=1_000_000.0),
        StragglerRule(target="link", ids=[2], delay=ConstantDelay(seconds=0.25)),
    ]
    to0, to1 = delayer_for(rules, "link", 2, 0, peer=0), delayer_for(rules, "link", 2, 0, peer=1)
    assert to0.sample(0, nbytes=4_000_000) == 0.25
    assert to1.sample(0, nbytes=4_000_000) == 0.25 + 4.0
    assert to1.sample(0, nbytes=3) == 0.25 + 3 / 1_000_000.0
    assert to1.sample(0) == 0.25
    assert not delayer_for(rules, "link", 0, 0, peer=0).active
    assert delayer_for(rules, "link", 0, 0, peer=1).sample(7, nbytes=500_000) == 0.5
    no_peer = delayer_for(rules, "link", 2, 0)  # without a peer: only rules for every server
    assert no_peer.sample(0, nbytes=10**6) == 0.25


def test_delayer_for_rejects_unknown_targets_and_negative_ids():
    with pytest.raises(ValueError, match="target 'gpu'"):
        delayer_for([], "gpu", 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        delayer_for([], "worker", -1, 0)


def test_delayer_seeds_are_reproducible_and_independent():
    jitter = {"kind": "lognormal", "median": 1.0, "sigma": 1.0}
    rules = [rule(delay=jitter), rule(delay=jitter), StragglerRule(target="link", delay=jitter)]

    def seq(target, rid, seed, peer=None, n=50):
        d = delayer_for(rules, target, rid, seed, peer=peer)
        return [d.sample(s) for s in range(n)]

    assert seq("worker", 1, 0) == seq("worker", 1, 0)
    distinct = [
        seq("worker", 0, 0),
        seq("worker", 1, 0),
        seq("worker", 0, 1),
        seq("link", 0, 0, peer=0),
        seq("link", 0, 0, peer=1),
        seq("link", 0, 0),
    ]
    assert len({tuple(x) for x in distinct}) == len(distinct)
    # two identical rules on one worker draw independently: their sum is not 2 × one draw
    both = delayer_for(rules, "worker", 0, 0)
    one = delayer_for(rules[:1], "worker", 0, 0)
    a, b = [both.sample(s) for s in range(1000)], [one.sample(s) for s in range(1000)]
    assert not np.allclose(a, 2 * np.array(b))
    # the sum of two independent lognormals has a smaller spread than 2 × one (same mean)
    assert np.std(np.log(a)) < 0.85 * np.std(np.log(b))


def test_delayer_without_rules_is_inactive_and_cheap():
    d = Delayer()
    assert not d.active and d.sample(0, 1.0, 100) == 0.0
