"""Protocol invariants of DESIGN.md §2 under random event orders, driven by tests/harness.py.

For every mode, random N (1..5), S (1..3), B (S..6), thresholds, deadlines and delivery orders:
(a) no deadlock: every worker does its steps while all servers live (also when one leaves early);
(b) versions only grow, at servers and in every worker's local copy;
(c) no contribution is applied twice, and a worker appears at most once per Apply;
(d) an Apply has k contributors (more, up to every live worker, with a grace), fewer only by the push
    deadline or after workers left (then >= 1);
(e) every accepted contribution is within the staleness bound;
(f) bsp runs in lockstep: N contributors on base version - 1, step t computed on versions t;
(g) with fold_repeats no push is dropped as a duplicate (a repeat is added to its worker's contribution,
    which the harness checks in every Apply).
The harness checks (b)-(e) at every event as well; the tests re-check them on the records.

The tests at the end pin deadlocks these properties found outside the region the generator draws from;
the policy now refuses those configurations.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from harness import Harness, Scenario, Stop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weaksync.core import MODES, SyncPolicy, make_policy

STEPS = 6
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def scenarios(
    draw: st.DrawFn,
    modes: tuple[str, ...] = MODES,
    stops: bool = False,
    overrides: bool = True,
    deadlines: bool = True,
    warmup: bool = True,
) -> Scenario:
    """A cluster, a policy of `modes` with random valid thresholds, and an event-order seed.

    Thresholds stay inside the design table: ssp keeps k = 1 and no τ (its row), and a partial pull
    (b < B) comes with τ >= 1 or a deadline (the policy refuses the rest, see the tests at the end).
    """
    mode = draw(st.sampled_from(modes))
    n, s = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    nb = draw(st.integers(s, 6))
    kw: dict = {}
    if overrides:
        if mode != "ssp" and draw(st.booleans()):
            kw["k"] = draw(st.integers(1, n) | st.sampled_from([0.5, 1.0]))
        if draw(st.booleans()):
            kw["b"] = draw(st.integers(1, nb))
        if mode not in ("ssp", "async") and draw(st.booleans()):
            kw["tau"] = draw(st.integers(0, 3))
        kw["ssp_slack"] = draw(st.integers(0, 3))
        kw["weighting"] = draw(st.sampled_from(["none", "inverse"]))
        kw["fold_repeats"] = draw(st.booleans())
        kw["grace"] = draw(st.sampled_from([None, 0.5, 1.0]))
        if warmup:  # versions made synchronously first (ssp and async; the other modes ignore it)
            kw["sync_warmup"] = draw(st.integers(0, STEPS + 1))
    if deadlines:
        kw["push_deadline"] = draw(st.none() | st.sampled_from([0.5, 2.0]))
        kw["pull_deadline"] = draw(st.none() | st.sampled_from([1.0, 3.0]))
    try:
        policy = make_policy(mode, n, nb, **kw)
    except ValueError:  # τ = 0 with b < B and no deadline is refused (it can deadlock): use τ = 1
        policy = make_policy(mode, n, nb, **{**kw, "tau": 1})
    leaving: dict[int, Stop] = {}
    if stops and n > 1:
        who = draw(st.integers(0, n - 1))
        leaving[who] = Stop(draw(st.integers(0, STEPS - 1)), draw(st.sampled_from(["bye", "crash"])))
    return Scenario(policy, s, STEPS, draw(st.integers(0, 2**32 - 1)), draw(st.booleans()), leaving)


def check_records(h: Harness) -> None:
    """(b)-(e) on what the run recorded (the harness also checked them event by event)."""
    p = h.policy
    seen: set[tuple[int, int, int]] = set()
    last = [0] * p.num_blocks
    for u in h.updates:
        a = u.action
        assert a.version == last[a.block] + 1, "(b) block versions grow by one per Apply"
        last[a.block] = a.version
        workers = [w for w, _, _ in a.contributors]
        assert len(set(workers)) == len(workers), "(c) a worker at most once per Apply"
        for c in u.contributions:
            assert (c.worker, a.block, c.step) not in seen, "(c) a contribution applied twice"
            seen.add((c.worker, a.block, c.step))
            assert c.tau is None or a.version - 1 - c.base <= c.tau, "(e) staleness bound in force when accepted"
            if not p.auto:
                assert c.tau == (0 if a.version <= p.sync_warmup else p.tau), "τ = 0 in the synchronous warm-up"
        assert len(workers) >= 1
        if not a.by_deadline:
            k = p.k if a.quorum is None else a.quorum  # auto: the k in force when the round closed
            assert len(workers) >= min(k, u.live), "(d) quorum, capped only by departures"
            if u.live == p.num_workers and p.grace is None and not p.auto:
                assert len(workers) == k, "(d) exactly k while everyone is live"
        else:  # a push deadline, or auto's cut (never below k_min; the harness checks its timing)
            assert p.push_deadline is not None or (p.auto and len(workers) >= p.k_min)
    for core in h.servers:
        for block in core.blocks:
            assert core.version(block) == last[block]
    for plans in h.plans:  # (b) in every worker: the versions a step computes on never go back
        for before, after in zip(plans, plans[1:]):
            assert all(x <= y for x, y in zip(before.versions, after.versions))
    if p.fold_repeats:  # a repeat is added to its worker's contribution (the harness checks every Apply)
        assert h.drops["duplicate"] == 0, "with fold_repeats nothing is dropped as a duplicate"


@FAST
@given(scenarios())
def test_every_mode_makes_progress_and_keeps_the_invariants(scenario: Scenario) -> None:
    h = scenario.run()  # raises Deadlock / InvariantViolation
    assert [w.step for w in h.workers] == [STEPS] * scenario.policy.num_workers
    check_records(h)


@FAST
@given(scenarios(stops=True))
def test_a_worker_leaving_never_stalls_the_others(scenario: Scenario) -> None:
    h = scenario.run()
    for w, core in enumerate(h.workers):
        stop = scenario.stops.get(w)
        assert core.step == (stop.after if stop else STEPS)
    check_records(h)


@settings(max_examples=100, deadline=None)
@given(scenarios(modes=("bsp",), overrides=False, deadlines=False))
def test_bsp_runs_in_lockstep(scenario: Scenario) -> None:
    h = scenario.run()
    n, nb = scenario.policy.num_workers, scenario.policy.num_blocks
    assert all(len(u.action.contributors) == n for u in h.updates)
    assert all(base == u.action.version - 1 for u in h.updates for _, base, _ in u.action.contributors)
    for plans in h.plans:
        assert [p.versions for p in plans] == [(t,) * nb for t in range(STEPS)]
        assert all(p.fresh == frozenset(range(nb)) for p in plans)
    assert h.version == [STEPS] * nb
    assert h.drops == {}


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 5), st.integers(1, 3), st.integers(0, 3), st.integers(0, 2), st.integers(0, 2**32 - 1), st.booleans()
)
def test_ssp_bounds_how_far_ahead_a_worker_runs(n: int, s: int, extra: int, slack: int, seed: int, split: bool) -> None:
    """b = B, no pull deadline: the harness checks at every begin_step that no worker starts step t
    before every live worker completed t - slack steps (one more for a driver that installs replies
    while computing, see harness.py)."""
    policy = make_policy("ssp", n, s + extra, ssp_slack=slack)
    h = Scenario(policy, s, STEPS, seed, split).run()
    check_records(h)
    assert h.updates and all(len(u.action.contributors) == 1 for u in h.updates)


@settings(max_examples=40, deadline=None)
@given(scenarios(modes=("async",), deadlines=False, warmup=False))
def test_async_pulls_are_answered_at_once(scenario: Scenario) -> None:
    h = scenario.run()  # the harness checks every async pull is answered in the same event
    p = scenario.policy
    assert all(not core.blocks[j].parked for core in h.servers for j in core.blocks)
    assert h.sends == p.num_workers * p.num_blocks * (STEPS + 1)  # every pull, initial one included


@settings(max_examples=150, deadline=None)
@given(scenarios(modes=("ssp", "async"), overrides=False, deadlines=False), st.integers(1, STEPS))
def test_ssp_and_async_warm_up_in_lockstep_then_run_their_own_rules(scenario: Scenario, warmup: int) -> None:
    """The first `sync_warmup` versions of every block hold every worker's gradient on the version before,
    as bsp's do; the rest follow the mode (ssp and async apply single gradients again)."""
    policy = replace(scenario.policy, sync_warmup=warmup)
    h = replace(scenario, policy=policy).run()
    n = policy.num_workers
    assert [w.step for w in h.workers] == [STEPS] * n
    check_records(h)
    early = [u.action for u in h.updates if u.action.version <= warmup]
    assert len(early) == policy.num_blocks * min(warmup, STEPS)
    assert all(len(a.contributors) == n for a in early)
    assert all(base == a.version - 1 for a in early for _, base, _ in a.contributors)
    assert all(a.quorum == n for a in early), "the LR rule sees the warm-up's quorum N"
    late = [u.action for u in h.updates if u.action.version > warmup]
    if n > 1 and late:
        assert any(len(a.contributors) < n for a in late), "after the warm-up, the mode's own k = 1"


def test_warm_up_is_only_for_ssp_and_async() -> None:
    assert make_policy("async", 4, 4, sync_warmup=5).sync_warmup == 5
    assert make_policy("ssp", 4, 4, sync_warmup=5).sync_warmup == 5
    for mode in ("bsp", "backup", "partial-pull", "partial", "auto"):
        assert make_policy(mode, 4, 4, sync_warmup=5).sync_warmup == 0
    with pytest.raises(ValueError, match="sync_warmup"):
        replace(make_policy("async", 4, 4), sync_warmup=-1)


# -- deadlocks outside the generated region --------------------------------------------------------------


def drain(h: Harness, src: str, dst: str) -> None:
    while h.channels[(src, dst)]:
        h.do(("deliver", (src, dst)))


def stale_cycle(policy: SyncPolicy) -> Harness:
    """N = B = S = 3 (block j on server j), b = 2, τ = 0. Step 0 in lockstep; each worker i then gets the
    step-0 replies of the two blocks j != i, computes step 1 with a stale copy of block i (its push there
    is dropped as stale, and its request for block i is still outstanding), and only then receives block i.
    """
    h = Harness(policy, [0, 1, 2], STEPS, split_steps=False)
    for w in range(3):  # initial full pull, then step 0 everywhere
        for s in range(3):
            drain(h, f"w{w}", f"s{s}")
            drain(h, f"s{s}", f"w{w}")
    for w in range(3):
        h.do(("begin", w))
    for s in range(3):  # step 0's pushes and pulls reach every server: v1 everywhere
        for w in range(3):
            drain(h, f"w{w}", f"s{s}")
    for w in range(3):  # worker w hears of every block but its own: b = 2 refreshed, step 1
        for s in range(3):
            if s != w:
                drain(h, f"s{s}", f"w{w}")
        h.do(("begin", w))
    for s in range(3):  # step 1: worker s's push to block s is stale; the others' are accepted
        for w in range(3):
            drain(h, f"w{w}", f"s{s}")
    for w in range(3):  # the late step-0 reply: one refreshed block, b = 2 needed
        drain(h, f"s{w}", f"w{w}")
    return h


def test_full_quorum_partial_pull_with_zero_staleness_is_refused() -> None:
    """k = N, b < B, τ = 0 without a deadline deadlocks (stale_cycle shows how): the policy refuses it."""
    with pytest.raises(ValueError, match="can deadlock"):
        make_policy("partial-pull", 3, 3, b=2, tau=0)


@pytest.mark.parametrize("deadline", ["pull_deadline", "push_deadline"])
def test_zero_staleness_partial_pull_lives_with_a_deadline(deadline: str) -> None:
    """The same event sequence completes once a deadline lets a round or a step go ahead."""
    h = stale_cycle(make_policy("partial-pull", 3, 3, b=2, tau=0, **{deadline: 1.0}))
    h.run()


def test_ssp_dropped_push_advances_the_clock_no_deadlock() -> None:
    """SSP with stale drops (τ = 0, allowed with a push deadline): a dropped push still counts as the
    worker's progress, so the clock bound never holds everyone back."""
    h = stale_cycle(make_policy("ssp", 3, 3, b=2, tau=0, ssp_slack=0, push_deadline=1.0))
    h.run()


# Found by the properties (seed 4717), N=2, B=3, S=1, k=2, b=1, slack 0; every clock is exact at the end.
SSP_QUORUM_SCRIPT = """
w1>s0 s0>w1 w1>s0 s0>w1 w0>s0 w0>s0 w1>s0 s0>w1 s0>w0 step1 w1>s0 s0>w0 w1>s0 w1>s0 w0>s0 s0>w0 step0
w0>s0 w0>s0 w1>s0 s0>w1 w1>s0 step1 w0>s0 s0>w1 w1>s0 step1 w1>s0 w1>s0 w1>s0 w1>s0 w0>s0 w1>s0 s0>w1
w0>s0 w0>s0 w1>s0 s0>w0 s0>w0 step1 s0>w0 w1>s0 w1>s0 w1>s0 w1>s0 step0 w1>s0 w0>s0 w0>s0 w1>s0 w0>s0
w0>s0 s0>w0 w0>s0 w0>s0 s0>w0 s0>w0 step0 w0>s0 w0>s0 w0>s0 w0>s0 w0>s0 w0>s0
"""


def test_ssp_with_a_quorum_above_one_is_refused() -> None:
    """SSP with k > 1 deadlocks under SSP_QUORUM_SCRIPT (pulls of a worker ahead are held while rounds
    wait for it); DESIGN.md's ssp has k = 1 and the policy refuses anything else."""
    with pytest.raises(ValueError, match="ssp applies every gradient on arrival"):
        make_policy("ssp", 2, 3, k=2, b=1, ssp_slack=0)


def test_ssp_does_not_hold_a_pull_that_the_synchronous_warm_up_waits_for() -> None:
    """Found by the property above (a fresh clone's run, 2026-12-07). A pull deadline let worker 2 step ahead on
    a stale block during the warm-up, where its stale gradient is dropped (τ = 0). SSP (slack 0) then held its
    pull, since it was a step ahead of worker 1; but worker 1 waited for the next version, which the warm-up
    makes only with every live worker's fresh gradient, worker 2's included: a deadlock. So a worker has no pull
    deadline while a block it holds is in the warm-up (a step on it would be dropped anyway)."""
    policy = SyncPolicy(
        mode="ssp", num_workers=5, num_blocks=3, k=1, b=3, tau=None, pull_deadline=1.0, ssp_slack=0,
        fold_repeats=False, sync_warmup=3,
    )  # fmt: skip
    stops = {0: Stop(after=0, how="crash", restart=False)}
    Scenario(policy, num_servers=2, steps=6, seed=8155, split_steps=True, stops=stops).run()
