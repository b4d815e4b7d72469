"""Membership, expiry and the step budget are protocol rules of the core: under random event orders a
worker that leaves (bye or crash), is restarted and rejoins, or falls silent past the expiry and speaks
again, never deadlocks the run, and the run never ends before its budget of worker steps was computed.

Driven by tests/harness.py with `membership`: every worker process says hello first; a restarted one
waits for every server's welcome and resumes at the largest clock they give; the harness checks at each
EndRun that the steps it counts were really computed (by any process), and that the budget was reached.
"""

from __future__ import annotations

from harness import Harness, Stop, block_owners
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weaksync.core import MODES, ServerCore, make_policy
from weaksync.core.actions import EndRun, Welcome

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def membership_runs(draw: st.DrawFn) -> Harness:
    mode = draw(st.sampled_from(MODES))
    n, servers = draw(st.integers(1, 4)), draw(st.integers(1, 2))
    blocks = draw(st.integers(servers, 4))
    kw: dict = {"push_deadline": draw(st.none() | st.sampled_from([0.5, 2.0]))}
    if mode in ("partial-pull", "partial", "auto"):
        kw["pull_deadline"] = draw(st.none() | st.sampled_from([1.0, 3.0]))
    policy = make_policy(mode, n, blocks, **kw)
    steps = draw(st.integers(1, 6))
    stops = {}
    for w in range(n):
        how = draw(st.sampled_from(["none", "bye", "crash", "restart"]))
        if how != "none":
            after = draw(st.integers(0, steps))
            stops[w] = Stop(after, "bye" if how == "bye" else "crash", restart=how == "restart")
    return Harness(
        policy,
        block_owners(blocks, servers),
        steps,
        seed=draw(st.integers(0, 2**16)),
        stops=stops,
        membership=True,
        expiry=draw(st.none() | st.sampled_from([0.7, 2.5])),
        budget=draw(st.none() | st.integers(1, n * steps)),
    )


@SETTINGS
@given(membership_runs())
def test_leaving_rejoining_and_silence_never_deadlock_and_never_end_early(run: Harness) -> None:
    run.run()  # raises Deadlock, or InvariantViolation (an EndRun before the budget was computed, ...)
    for w in run.restarted:
        assert all(w in core.members.registered for core in run.servers)
    if run.end_runs:
        assert all(end.steps >= run.budget for _, end in run.end_runs)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(MODES))
def test_a_restarted_worker_is_waited_for_again(seed: int, mode: str) -> None:
    """A crash, a restart and a hello: every server waits for the worker again, and it does its steps."""
    policy = make_policy(mode, 3, 2)
    stops = {1: Stop(2, "crash", restart=True)}
    run = Harness(policy, block_owners(2, 2), [4, 8, 4], seed=seed, stops=stops, membership=True).run()
    assert 1 in run.restarted and run.workers[1].step >= 8
    assert any(c.worker == 1 and c.life == 1 for u in run.updates for c in u.contributions), "its work counts"


def test_an_expired_worker_is_waited_for_again_when_it_speaks() -> None:
    core = ServerCore(make_policy("bsp", 2, 1), [0], registration=True, expiry=1.0)
    assert core.on_hello(0, 0.0) == [Welcome(0, 0, rejoined=False)]
    core.on_hello(1, 0.0)
    core.on_pull(0, 0, -1, 0, 0.9)
    core.on_timer(1.0)
    assert core.live == {0}
    core.on_pull(1, 0, -1, 0, 3.0)
    assert core.live == {0, 1}


def test_budget_with_a_resumed_clock_is_not_reached_by_the_jump() -> None:
    """A worker that resumes at clock 8 (another server's welcome) has not done steps 0..7 here."""
    core = ServerCore(make_policy("async", 1, 1), [0], budget=3, registration=True)
    core.on_hello(0, 0.0)
    core.on_pull(0, 0, -1, 8, 0.0)
    assert core.steps_done() == 0
    actions = [a for t in range(3) for a in core.on_push(0, 0, core.version(0), 8 + t, 0.0)]
    assert [a for a in actions if isinstance(a, EndRun)] == [EndRun(3)]
