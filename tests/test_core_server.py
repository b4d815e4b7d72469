"""ServerCore, one test per rule of DESIGN.md §2 (server side)."""

from __future__ import annotations

import pytest

from weaksync.core import Accept, Apply, Drop, Send, ServerCore, make_policy
from weaksync.core.actions import DROP_REASONS, EndRun, Expired, Orphaned, Refuse, Revived, Welcome


def server(mode: str = "bsp", n: int = 3, nb: int = 2, blocks: tuple[int, ...] = (0,), **kw: object) -> ServerCore:
    return ServerCore(make_policy(mode, n, nb, **kw), blocks)


def of(kind: type, actions: list) -> list:
    return [a for a in actions if isinstance(a, kind)]


def advance(core: ServerCore, block: int, times: int, worker: int = 0) -> None:
    """With k = 1: push `times` fresh contributions so the block reaches version + times."""
    for _ in range(times):
        v = core.version(block)
        assert of(Apply, core.on_push(worker, block, v, v, 0.0))


# -- quorum --------------------------------------------------------------------------------------------


def test_quorum_k_applies_exactly_once_with_all_accepted_contributions() -> None:
    core = server("bsp", n=3)
    assert core.on_push(2, 0, 0, 5, 0.0) == [Accept(2, 0, 0, 0, 1.0)]
    assert core.on_push(0, 0, 0, 7, 0.0) == [Accept(0, 0, 0, 0, 1.0)]
    assert core.version(0) == 0
    actions = core.on_push(1, 0, 0, 6, 0.0)
    assert actions[0] == Accept(1, 0, 0, 0, 1.0)
    applies = of(Apply, actions)
    assert applies == [Apply(0, 1, ((2, 0, 1.0), (0, 0, 1.0), (1, 0, 1.0)), step=7, by_deadline=False)]
    assert core.version(0) == 1 and core.updates == 1
    assert core.accepted == {0: 1, 1: 1, 2: 1}


def test_backup_quorum_applies_after_k_and_drops_the_late_one() -> None:
    core = server("backup", n=3, backups=1)  # k = 2, tau = 0
    core.on_push(0, 0, 0, 0, 0.0)
    applies = of(Apply, core.on_push(1, 0, 0, 0, 0.0))
    assert [a.contributors for a in applies] == [((0, 0, 1.0), (1, 0, 1.0))]
    assert core.on_push(2, 0, 0, 0, 0.0) == [Drop(2, 0, 0, 1, "stale")]
    assert core.updates == 1


def test_next_round_starts_empty() -> None:
    core = server("backup", n=3, backups=1)
    core.on_push(0, 0, 0, 0, 0.0)
    core.on_push(1, 0, 0, 0, 0.0)
    assert core.on_push(2, 0, 1, 1, 0.0) == [Accept(2, 0, 1, 1, 1.0)]  # no Apply: one of two so far
    assert of(Apply, core.on_push(0, 0, 1, 1, 0.0))[0].contributors == ((2, 1, 1.0), (0, 1, 1.0))


# -- drops ---------------------------------------------------------------------------------------------


def test_a_repeated_push_is_folded_into_the_workers_contribution_to_the_round() -> None:
    core = server("bsp", n=3)
    core.on_push(0, 0, 0, 0, 0.0)
    assert core.on_push(0, 0, 0, 1, 0.0) == [Accept(0, 0, 0, 0, 1.0)]
    assert core.folded == 1 and not core.drops
    assert core.on_push(1, 0, 0, 0, 0.0) == [Accept(1, 0, 0, 0, 1.0)]  # distinct workers make the quorum
    applies = of(Apply, core.on_push(2, 0, 0, 0, 0.0))
    assert applies[0].contributors == ((0, 0, 2.0), (1, 0, 1.0), (2, 0, 1.0))
    assert applies[0].step == 1


def test_without_fold_repeats_a_duplicate_from_the_same_worker_is_dropped() -> None:
    core = server("bsp", n=3, fold_repeats=False)
    core.on_push(0, 0, 0, 0, 0.0)
    assert core.on_push(0, 0, 0, 1, 0.0) == [Drop(0, 0, 0, 0, "duplicate")]
    assert core.drops["duplicate"] == 1 and core.dropped[0] == 1
    core.on_push(1, 0, 0, 0, 0.0)
    applies = of(Apply, core.on_push(2, 0, 0, 0, 0.0))
    assert [w for w, _, _ in applies[0].contributors] == [0, 1, 2]  # counted once
    assert of(Accept, core.on_push(0, 0, 1, 1, 0.0))  # a new version: may contribute again


@pytest.mark.parametrize("tau", [0, 1, 2, 3])
def test_staleness_within_tau_is_accepted_beyond_is_dropped(tau: int) -> None:
    core = server("backup", n=2, k=1, tau=tau)
    advance(core, 0, 4)
    assert core.version(0) == 4
    for base in range(4 - tau):  # v - u > tau
        assert core.on_push(1, 0, base, 9, 0.0) == [Drop(1, 0, base, 4, "stale")]
    assert core.drops["stale"] == 4 - tau and core.version(0) == 4
    ok = core.on_push(1, 0, 4 - tau, 9, 0.0)  # v - u == tau: accepted (and applied, k = 1)
    assert ok[0] == Accept(1, 0, 4 - tau, 4, 1.0)


def test_future_base_is_dropped() -> None:
    core = server("bsp", n=2)
    assert core.on_push(0, 0, 1, 0, 0.0) == [Drop(0, 0, 1, 0, "future")]
    assert core.drops["future"] == 1 and core.version(0) == 0


def test_malformed_payload_is_dropped_and_counted() -> None:
    core = server("bsp", n=1)
    actions = core.on_push(0, 0, 0, 0, 0.0, problem="payload has non-finite values")
    assert actions == [Drop(0, 0, 0, 0, "malformed")]
    assert core.drops["malformed"] == 1 and core.dropped[0] == 1
    assert core.version(0) == 0 and not core.blocks[0].contributors
    assert of(Apply, core.on_push(0, 0, 0, 0, 0.0))  # the next good one still counts (k = 1 = N)


def test_unknown_block_is_dropped_for_push_and_pull() -> None:
    core = server("bsp", n=2, nb=3, blocks=(0, 2))
    assert core.on_push(0, 1, 0, 0, 0.0) == [Drop(0, 1, 0, -1, "unknown-block")]
    assert core.on_pull(0, 7, -1, 0, 0.0) == [Drop(0, 7, -1, -1, "unknown-block")]
    assert core.drops["unknown-block"] == 2


@pytest.mark.parametrize("worker", [2, 99, -1])
def test_unknown_worker_is_dropped_for_push_and_pull(worker: int) -> None:
    core = server("bsp", n=2)
    assert core.on_push(worker, 0, 0, 0, 0.0) == [Drop(worker, 0, 0, 0, "unknown-worker")]
    assert core.on_pull(worker, 0, -1, 0, 0.0) == [Drop(worker, 0, -1, 0, "unknown-worker")]
    assert core.drops["unknown-worker"] == 2
    assert sum(core.dropped.values()) == 0  # per-worker counters only for real workers


def test_push_of_a_worker_that_left_is_dropped() -> None:
    core = server("bsp", n=3)
    core.worker_left(1)
    assert core.on_push(1, 0, 0, 0, 0.0) == [Drop(1, 0, 0, 0, "left")]


def test_drop_reasons_are_the_documented_ones() -> None:
    assert set(DROP_REASONS) == {
        "stale",
        "duplicate",
        "future",
        "unknown-block",
        "unknown-worker",
        "left",
        "malformed",
        "unregistered",
    }


# -- pulls ---------------------------------------------------------------------------------------------


def test_initial_pull_is_answered_at_once() -> None:
    core = server("bsp", n=2)
    assert core.on_pull(1, 0, -1, 0, 0.0) == [Send(1, 0, 0)]


def test_pull_is_answered_now_when_newer() -> None:
    core = server("backup", n=2, k=1)
    advance(core, 0, 2)
    assert core.on_pull(1, 0, 1, 1, 0.0) == [Send(1, 0, 2)]


def test_pull_is_parked_until_the_apply_that_advances_the_block() -> None:
    core = server("bsp", n=2)
    assert core.on_pull(0, 0, 0, 1, 0.0) == []
    assert core.on_pull(1, 0, 0, 1, 0.0) == []
    assert core.blocks[0].parked == {0: 0, 1: 0}
    assert core.on_push(0, 0, 0, 0, 0.0) == [Accept(0, 0, 0, 0, 1.0)]
    actions = core.on_push(1, 0, 0, 0, 0.0)
    kinds = [type(a) for a in actions]
    assert kinds == [Accept, Apply, Send, Send]  # answered by the Apply, after it
    assert set(of(Send, actions)) == {Send(0, 0, 1), Send(1, 0, 1)}
    assert core.blocks[0].parked == {}


def test_parked_pull_waits_for_a_version_beyond_its_want() -> None:
    core = server("backup", n=2, k=1)
    assert core.on_pull(0, 0, 1, 2, 0.0) == []
    assert not of(Send, core.on_push(1, 0, 0, 0, 0.0))  # v1 is not > 1
    assert of(Send, core.on_push(1, 0, 1, 1, 0.0)) == [Send(0, 0, 2)]


def test_async_answers_at_once_even_with_nothing_new() -> None:
    core = server("async", n=2)
    assert core.on_pull(0, 0, 0, 1, 0.0) == [Send(0, 0, 0)]
    assert core.on_pull(0, 0, 5, 1, 0.0) == [Send(0, 0, 0)]
    assert core.blocks[0].parked == {}


# -- push deadline -------------------------------------------------------------------------------------


def test_push_deadline_applies_with_what_arrived() -> None:
    core = server("bsp", n=3, push_deadline=5.0)
    assert core.next_deadline() is None and core.on_timer(100.0) == []
    core.on_push(1, 0, 0, 3, 10.0)
    assert core.next_deadline() == 15.0
    core.on_push(2, 0, 0, 4, 12.0)
    assert core.next_deadline() == 15.0  # the first contribution of the round sets it
    assert core.on_timer(14.999) == []
    assert core.on_pull(0, 0, 0, 1, 14.999) == []
    actions = core.on_timer(15.0)
    assert actions[0] == Apply(0, 1, ((1, 0, 1.0), (2, 0, 1.0)), step=4, by_deadline=True)
    assert actions[1:] == [Send(0, 0, 1)]
    assert core.next_deadline() is None and core.on_timer(30.0) == []
    core.on_push(0, 0, 1, 5, 40.0)
    assert core.next_deadline() == 45.0


def test_push_deadline_is_cleared_when_the_quorum_is_met_first() -> None:
    core = server("bsp", n=2, push_deadline=1.0)
    core.on_push(0, 0, 0, 0, 0.0)
    core.on_push(1, 0, 0, 0, 0.5)
    assert core.next_deadline() is None and core.on_timer(2.0) == []


def test_next_deadline_is_the_earliest_block() -> None:
    core = server("bsp", n=2, nb=3, blocks=(0, 1, 2), push_deadline=2.0)
    core.on_push(0, 2, 0, 0, 3.0)
    core.on_push(0, 1, 0, 0, 1.0)
    assert core.next_deadline() == 3.0
    assert [a.block for a in of(Apply, core.on_timer(3.0))] == [1]
    assert core.next_deadline() == 5.0


# -- workers leaving and joining -----------------------------------------------------------------------


def test_worker_left_caps_the_quorum_and_can_apply() -> None:
    core = server("bsp", n=3)
    core.on_push(0, 0, 0, 0, 0.0)
    core.on_push(1, 0, 0, 0, 0.0)
    core.on_pull(2, 0, 0, 1, 0.0)
    actions = core.worker_left(2)
    assert of(Apply, actions) == [Apply(0, 1, ((0, 0, 1.0), (1, 0, 1.0)), step=0, by_deadline=False)]
    assert not of(Send, actions)  # the departed worker's parked pull is forgotten
    assert core.live == {0, 1}
    assert core.worker_left(2) == [] and core.worker_left(7) == []
    core.on_push(0, 0, 1, 1, 0.0)
    assert of(Apply, core.on_push(1, 0, 1, 1, 0.0))  # two live workers: quorum 2 from now on


def test_a_departed_contributor_still_counts_for_its_round() -> None:
    core = server("bsp", n=3)
    core.on_push(0, 0, 0, 5, 0.0)
    assert core.worker_left(0) == []  # the round still waits for the live ones
    core.on_push(1, 0, 0, 5, 0.0)
    applies = of(Apply, core.on_push(2, 0, 0, 5, 0.0))
    assert [w for w, _, _ in applies[0].contributors] == [0, 1, 2]


def test_last_worker_leaving_applies_what_is_there() -> None:
    core = server("bsp", n=2)
    core.on_push(0, 0, 0, 0, 0.0)
    core.worker_left(0)
    assert of(Apply, core.worker_left(1))


def test_a_hello_after_leaving_takes_the_worker_back() -> None:
    core = server("bsp", n=2)
    core.worker_left(1)
    assert core.on_hello(1, 0.0) == [Welcome(1, 0, rejoined=True)]
    assert core.live == {0, 1}
    assert core.on_push(1, 0, 0, 0, 0.0) == [Accept(1, 0, 0, 0, 1.0)]
    assert of(Refuse, core.on_hello(5, 0.0))  # not a worker id
    assert core.live == {0, 1}


def test_a_rejoining_worker_starts_from_the_slowest_clock_so_ssp_does_not_wait_for_it() -> None:
    core = server("ssp", n=3, ssp_slack=2)
    core.on_pull(0, 0, 5, 4, 0.0)
    core.on_pull(1, 0, 5, 6, 0.0)
    core.worker_left(2)
    assert core.on_hello(2, 0.0) == [Welcome(2, 4, rejoined=True)]
    assert min(core.clocks[w] for w in core.live) == 4  # the others are not held back by the newcomer
    assert core.on_pull(1, 0, -1, 6, 0.0) == [Send(1, 0, 0)]
    assert core.on_pull(2, 0, -1, 4, 0.0) == [Send(2, 0, 0)]  # the restarted worker gets its first pull


def test_the_clock_a_worker_resumes_from_is_not_counted_as_steps_done() -> None:
    core = ServerCore(make_policy("async", 2, 1), [0], budget=12, registration=True)
    for w in (0, 1):
        core.on_hello(w, 0.0)
        core.on_pull(w, 0, -1, 0, 0.0)
    advance(core, 0, 10)
    core.worker_left(1)
    assert core.on_hello(1, 1.0) == [Welcome(1, 10, rejoined=True)]
    assert core.on_pull(1, 0, -1, 10, 1.0) == [Send(1, 0, core.version(0))]  # it resumes at step 10 ...
    assert core.steps_done() == 10  # ... which it never did: 12 steps are still 2 away
    assert not of(EndRun, core.on_push(1, 0, core.version(0), 10, 1.0))
    assert of(EndRun, core.on_push(1, 0, core.version(0), 11, 1.0))


def test_with_registration_work_before_hello_is_dropped() -> None:
    core = ServerCore(make_policy("bsp", 2, 1), [0], registration=True)
    assert of(Drop, core.on_push(0, 0, 0, 0, 0.0))[0].reason == "unregistered"
    assert of(Drop, core.on_pull(0, 0, -1, 0, 0.0))[0].reason == "unregistered"
    core.on_hello(0, 0.0)
    assert core.on_pull(0, 0, -1, 0, 0.0) == [Send(0, 0, 0)]


def test_a_silent_worker_expires_and_comes_back_when_it_speaks() -> None:
    core = ServerCore(make_policy("bsp", 2, 1), [0], registration=True, expiry=5.0)
    core.on_hello(0, 0.0)
    core.on_hello(1, 0.0)
    core.on_push(0, 0, 0, 0, 1.0)
    core.on_pull(0, 0, 0, 1, 1.0)  # parked until v1
    assert core.next_deadline() == 5.0  # worker 1, heard at 0
    assert core.on_heartbeat(0, 4.0) == []
    actions = core.on_timer(5.0)
    assert Expired(1, 5.0) in actions and core.live == {0}
    assert of(Apply, actions) and of(Send, actions) == [Send(0, 0, 1)]  # the round closes without it
    assert core.on_heartbeat(1, 6.0) == [Revived(1)] and core.live == {0, 1}
    assert core.clocks[1] == 0  # its clock is kept: it is the same process


def test_a_silent_worker_keeps_its_parked_pull() -> None:
    core = ServerCore(make_policy("bsp", 2, 1), [0], registration=True, expiry=5.0)
    core.on_hello(0, 0.0)
    core.on_hello(1, 0.0)
    core.on_push(1, 0, 0, 0, 0.0)
    core.on_pull(1, 0, 0, 1, 0.0)
    core.on_heartbeat(0, 4.0)
    core.on_timer(5.0)  # worker 1 expires, still waiting for v1
    assert Send(1, 0, 1) in core.on_push(0, 0, 0, 0, 6.0)  # answered when the round it waits for closes


def test_orphaned_once_every_worker_has_long_been_gone() -> None:
    core = ServerCore(make_policy("bsp", 1, 1), [0], registration=True, orphan_after=10.0)
    core.on_hello(0, 0.0)
    core.on_bye(0, 1.0)
    assert core.on_timer(1.0) == [] and core.next_deadline() == 11.0
    assert core.on_timer(11.0) == [Orphaned(10.0)]
    assert core.on_timer(30.0) == []  # told once


# -- SSP -----------------------------------------------------------------------------------------------


def test_ssp_parks_a_worker_too_far_ahead_until_the_slowest_advances() -> None:
    core = server("ssp", n=2, ssp_slack=1)
    advance(core, 0, 3)  # worker 0 pushed steps 0..2: clock 3; worker 1 at clock 0
    assert core.on_pull(0, 0, 0, 3, 0.0) == []  # 3 - 0 > 1, although v3 > 0
    assert core.on_pull(1, 0, 0, 0, 0.0) == [Send(1, 0, 3)]  # the slowest is never held
    assert core.on_pull(1, 0, 3, 1, 0.0) == []  # clock 1: 3 - 1 > 1 still
    actions = core.on_push(1, 0, 3, 1, 0.0)  # worker 1 completes step 1: clock 2
    assert set(of(Send, actions)) == {Send(0, 0, 4), Send(1, 0, 4)}


def test_ssp_slack_is_inclusive() -> None:
    core = server("ssp", n=2, ssp_slack=2)
    advance(core, 0, 1)
    assert core.on_pull(0, 0, 0, 2, 0.0) == [Send(0, 0, 1)]  # exactly slack ahead: served
    assert core.on_pull(0, 0, 0, 3, 0.0) == []


def test_ssp_releases_when_the_slowest_leaves() -> None:
    core = server("ssp", n=3, ssp_slack=0)
    advance(core, 0, 1)
    assert core.on_pull(1, 0, 0, 1, 0.0) == []  # worker 2 is at clock 0
    assert core.on_pull(0, 0, 0, 1, 0.0) == []
    assert set(of(Send, core.worker_left(2))) == {Send(0, 0, 1), Send(1, 0, 1)}


def test_ssp_a_dropped_push_still_advances_the_clock() -> None:
    core = server("ssp", n=2, nb=1, tau=0, ssp_slack=0)
    assert of(Apply, core.on_push(0, 0, 0, 0, 0.0))  # worker 0 completes step 0: v1, clock 1
    assert core.on_push(1, 0, 0, 0, 0.0) == [Drop(1, 0, 0, 1, "stale")]  # worker 1 completes step 0 too
    assert core.on_pull(0, 0, 0, 1, 0.0) == [Send(0, 0, 1)]  # both at clock 1: worker 0 may go on


def test_ssp_does_not_hold_pulls_in_the_synchronous_warm_up() -> None:
    """In the warm-up (k = N, τ = 0) a worker whose step was dropped as stale runs ahead in clock while the
    round waits for its fresh gradient: SSP holding its pull for the slower worker, which waits for that
    round, was a deadlock (found by the property test). The version barrier alone holds them together."""
    core = server("ssp", n=2, nb=1, ssp_slack=0, sync_warmup=3)
    core.on_push(0, 0, 0, 0, 0.0)
    assert of(Apply, core.on_push(1, 0, 0, 0, 0.0))  # both in: v1, clocks 1 and 1
    assert of(Drop, core.on_push(1, 0, 0, 1, 0.0))  # worker 1's step on v0 again: stale, its clock 2
    assert core.on_pull(0, 0, 1, 1, 0.0) == []  # worker 0 waits for v2, which needs worker 1's gradient ...
    assert core.on_pull(1, 0, 0, 2, 0.0) == [Send(1, 0, 1)]  # ... so worker 1 gets v1 although 1 step ahead
    core.on_push(0, 0, 1, 1, 0.0)
    assert of(Apply, core.on_push(1, 0, 1, 2, 0.0))  # and the round closes


# -- weighting -----------------------------------------------------------------------------------------


def test_inverse_staleness_weighting() -> None:
    core = server("partial", n=3, k=3, tau=3, weighting="inverse")
    core.on_push(0, 0, 0, 0, 0.0)
    core.on_push(1, 0, 0, 0, 0.0)
    core.on_push(2, 0, 0, 0, 0.0)  # v1
    core.on_push(0, 0, 1, 1, 0.0)
    core.on_push(1, 0, 1, 1, 0.0)
    core.on_push(2, 0, 1, 1, 0.0)  # v2
    assert core.on_push(0, 0, 2, 2, 0.0) == [Accept(0, 0, 2, 2, 1.0)]
    assert core.on_push(1, 0, 1, 2, 0.0) == [Accept(1, 0, 1, 2, 0.5)]
    actions = core.on_push(2, 0, 0, 2, 0.0)
    assert actions[0] == Accept(2, 0, 0, 2, pytest.approx(1 / 3))
    assert of(Apply, actions)[0].contributors == ((0, 2, 1.0), (1, 1, 0.5), (2, 0, pytest.approx(1 / 3)))


def test_no_weighting_gives_everyone_one() -> None:
    core = server("partial", n=2, k=2, tau=3)
    core.on_push(0, 0, 0, 0, 0.0)
    assert of(Apply, core.on_push(1, 0, 0, 0, 0.0))
    assert core.on_push(0, 0, 0, 1, 0.0) == [Accept(0, 0, 0, 1, 1.0)]  # staleness 1, weight still 1


# -- checkpoints ---------------------------------------------------------------------------------------


def test_a_restored_core_goes_on_with_the_versions_and_worker_steps_it_had() -> None:
    core = server("async", n=2, nb=2, blocks=(0, 1))
    advance(core, 0, 3)
    advance(core, 1, 1, worker=1)
    doc = core.checkpoint()
    fresh = server("async", n=2, nb=2, blocks=(0, 1))
    fresh.restore(doc)
    assert (fresh.version(0), fresh.version(1)) == (3, 1)
    assert fresh.steps_done() == core.steps_done() > 0 and fresh.updates == core.updates
    assert of(Send, fresh.on_pull(0, 0, 2, 0, 0.0)) == [Send(0, 0, 3)]  # a pull for newer than 2 is served at once
    v = fresh.version(0)
    assert of(Apply, fresh.on_push(1, 0, v, v, 0.0))[0].version == 4  # versions only grow


def test_a_checkpoint_of_other_blocks_is_refused() -> None:
    doc = server(blocks=(0,)).checkpoint()
    with pytest.raises(ValueError, match="owns"):
        server(blocks=(1,)).restore(doc)
