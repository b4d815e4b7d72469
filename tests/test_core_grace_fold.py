"""The two rules that make weak synchronization cost nothing when nothing is slow (docs/guarantees.md):
folding (no gradient is computed to be thrown away) and grace (k and b are minimums, waited past only
while the rest usually come soon)."""

from __future__ import annotations

import pytest

from weaksync.core import Accept, Apply, PushRequest, ServerCore, WorkerCore, make_policy
from weaksync.core.server import GRACE_HISTORY


def of(kind: type, actions: list) -> list:
    return [a for a in actions if isinstance(a, kind)]


# -- worker ----------------------------------------------------------------------------------------------


def started(core: WorkerCore) -> WorkerCore:
    core.start(0.0)
    for j in range(core.policy.num_blocks):
        core.on_block(j, 0)
    return core


def step(core: WorkerCore, now: float, took: float = 0.01) -> list[PushRequest]:
    core.begin_step(now)
    return core.end_step(now + took)[0]


def test_the_server_adds_a_repeated_push_to_the_workers_contribution_instead_of_dropping_it() -> None:
    core = ServerCore(make_policy("partial-pull", 2, 1, b=1), [0])  # k = 2
    core.on_push(0, 0, 0, 0, 0.0)
    assert core.on_push(0, 0, 0, 1, 0.1) == [Accept(0, 0, 0, 0, 1.0)]  # stepped again on the same version
    applies = of(Apply, core.on_push(1, 0, 0, 0, 0.2))
    assert applies[0].contributors == ((0, 0, 2.0), (1, 0, 1.0))  # averaged over all three minibatches
    assert core.gradients_applied == 3 and core.folded == 1 and not core.drops


# -- worker: pull grace ----------------------------------------------------------------------------------


def test_the_worker_waits_a_grace_for_the_remaining_blocks_once_b_are_fresh() -> None:
    core = started(WorkerCore(0, make_policy("partial-pull", 2, 4, b=2, grace=0.5)))
    step(core, 0.0, took=0.1)  # compute time 0.1 s: grace up to 0.05 s
    core.on_block(0, 1, 1.0)
    core.on_block(1, 1, 1.0)
    assert not core.ready(1.0) and abs(core.deadline() - 1.05) < 1e-9
    assert core.ready(1.05)
    core.on_block(2, 1, 1.01)
    core.on_block(3, 1, 1.01)  # every block in: no need to wait further
    assert core.ready(1.01)


def test_a_block_later_than_the_step_is_measured_and_a_persistently_late_block_is_not_waited_for() -> None:
    core = started(WorkerCore(0, make_policy("partial-pull", 2, 3, b=2, grace=0.5)))
    step(core, 0.0, took=0.1)  # grace up to 0.05 s
    core.on_block(0, 1, 1.0)
    core.on_block(1, 1, 1.0)
    assert core.grace() == pytest.approx(0.05) and core.awaited() == {2}
    step(core, 1.05, took=0.1)  # the grace ran out without block 2
    core.on_block(2, 1, 1.3)  # it comes 0.3 s after the quorum: measured although nobody waited
    assert core.late_after_quorum[2][-1] == pytest.approx(0.3)
    core.late_after_quorum[2].extend([0.3] * GRACE_HISTORY)
    core.on_block(0, 2, 2.0)
    core.on_block(1, 2, 2.0)
    assert core.awaited() == set() and core.ready(2.0)  # usually later than the cap: not waited for
    step(core, 2.0, took=0.1)
    core.late_after_quorum[2].extend([0.01] * GRACE_HISTORY)
    core.on_block(0, 3, 3.0)
    core.on_block(1, 3, 3.0)
    assert core.awaited() == {2} and not core.ready(3.0)  # it recovered: waited for again


def test_only_the_blocks_that_usually_come_soon_are_waited_for() -> None:
    core = started(WorkerCore(0, make_policy("partial-pull", 2, 4, b=2, grace=0.5)))
    step(core, 0.0, took=0.1)
    core.late_after_quorum[2].extend([0.3] * GRACE_HISTORY)  # block 2's server is slow, block 3's is not
    core.on_block(0, 1, 1.0)
    core.on_block(1, 1, 1.0)
    assert core.awaited() == {2, 3} - {2} and not core.ready(1.0)
    core.on_block(3, 1, 1.01)
    assert core.ready(1.01)  # block 3 in; block 2 is not waited for


def test_auto_once_it_lowered_b_waits_the_grace_for_blocks_that_come_soon() -> None:
    """A slow server's blocks were the b-th to arrive; without the grace, a step began as soon as they came and
    computed on the fast server's previous version (slow-server: auto's time to 95 % 1.51x partial-pull's,
    1.14x with it, docs/results.md)."""
    core = started(WorkerCore(0, make_policy("auto", 2, 4)))
    step(core, 0.0, took=0.1)
    core.b = 2  # as the tuner sets it
    core.on_block(1, 1, 1.0)
    core.on_block(3, 1, 1.0)  # b = 2 fresh ...
    assert core.awaited() == {0, 2} and not core.ready(1.0)  # ... the others usually come soon: wait
    core.on_block(0, 1, 1.01)
    core.on_block(2, 1, 1.01)
    assert core.ready(1.01)


def test_auto_servers_do_not_wait_a_grace_their_cut_decides() -> None:
    core = ServerCore(make_policy("auto", 3, 1), [0])
    core.period = 1.0
    assert core.policy.grace == 0.5 and core.grace() == 0.0


# -- server: grace ---------------------------------------------------------------------------------------


def push(core: ServerCore, worker: int, now: float, base: int | None = None) -> list:
    v = core.version(0) if base is None else base
    return core.on_push(worker, 0, v, v, now)


def warmed(mode: str) -> ServerCore:
    """A server of 3 workers whose rounds took 1 s so far: grace up to 0.5 s."""
    core = ServerCore(make_policy(mode, 3, 1, grace=0.5), [0])
    core.period = 1.0
    return core


def test_the_round_period_is_measured_between_updates_and_no_grace_before() -> None:
    core = ServerCore(make_policy("bsp", 1, 1, k=1), [0])
    assert core.grace() == 0.0 and core.period is None
    push(core, 0, 0.0), push(core, 0, 1.0), push(core, 0, 1.5)
    assert core.period == pytest.approx(1.0 + 0.2 * (0.5 - 1.0))


def test_a_round_that_met_k_waits_a_grace_for_the_last_worker_and_closes_when_it_comes() -> None:
    core = warmed("backup")
    assert core.grace() == 0.5
    push(core, 0, 2.0)
    assert not of(Apply, push(core, 1, 2.0))  # k = 2 met: wait for worker 2 ...
    assert core.next_deadline() == 2.5
    applies = of(Apply, push(core, 2, 2.1))  # ... which comes within the grace: all three in one update
    assert [w for w, _, _ in applies[0].contributors] == [0, 1, 2]


def test_the_grace_expires_with_k_and_the_late_gradient_goes_to_the_next_round() -> None:
    core = warmed("partial")  # k = 2, tau = 1
    push(core, 0, 2.0), push(core, 1, 2.0)
    assert not core.on_timer(2.4)
    applies = of(Apply, core.on_timer(2.5))
    assert [w for w, _, _ in applies[0].contributors] == [0, 1] and core.version(0) == 1
    assert of(Accept, push(core, 2, 2.7, base=0))  # staleness 1: accepted into the next round
    assert core.late_after_quorum[-1] == 2.7 - 2.0


def test_a_persistently_late_worker_is_no_longer_waited_for() -> None:
    core = warmed("backup")  # tau = 0: late ones are dropped
    t = 2.0
    for _ in range(GRACE_HISTORY):
        push(core, 0, t)
        push(core, 1, t)
        if core.next_deadline() is not None:
            core.on_timer(core.next_deadline())
        t += 1.0
    assert core.grace() == 0.0  # worker 2 never came: rounds close at k at once
    push(core, 0, t)
    assert of(Apply, push(core, 1, t))


def test_a_worker_leaving_during_the_grace_closes_the_round() -> None:
    core = warmed("backup")
    push(core, 0, 2.0), push(core, 1, 2.0)
    assert of(Apply, core.worker_left(2, 2.1))


def test_no_grace_for_ssp_and_async_and_where_quorums_are_full() -> None:
    assert make_policy("ssp", 4, 4).grace is None
    assert make_policy("async", 4, 4).grace is None
    assert make_policy("bsp", 4, 4).grace is None
    assert make_policy("partial-pull", 4, 4, b=4).grace is None
    assert make_policy("partial", 4, 4).grace == 0.5
    assert make_policy("partial", 4, 4, grace=None).grace is None


def test_a_gradient_dropped_as_stale_still_tells_how_late_it_was() -> None:
    core = warmed("backup")  # tau = 0
    core.late_after_quorum.extend([5.0] * GRACE_HISTORY)  # worker 2 used to be very late: no grace
    t = 2.0
    for _ in range(GRACE_HISTORY):
        push(core, 0, t)
        push(core, 1, t)  # closes at once
        assert push(core, 2, t + 0.1, base=core.version(0) - 1)[0].reason == "stale"
        t += 1.0
    assert list(core.late_after_quorum)[-1] == pytest.approx(0.1)
    assert core.grace() == 0.5  # it now comes 0.1 s after k: waited for again
