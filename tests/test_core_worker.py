"""WorkerCore: initial full pull, local versions, ready() rules, pushes and re-requests (DESIGN.md §2)."""

from __future__ import annotations

import pytest

from weaksync.core import PullRequest, PushRequest, StepPlan, WorkerCore, make_policy


def worker(mode: str = "partial-pull", n: int = 2, nb: int = 4, **kw: object) -> WorkerCore:
    return WorkerCore(0, make_policy(mode, n, nb, **kw))


def started(core: WorkerCore, version: int = 0) -> WorkerCore:
    """Do the initial full pull, every block answered at `version`."""
    core.start(0.0)
    for j in range(core.policy.num_blocks):
        core.on_block(j, version)
    return core


def one_step(core: WorkerCore, now: float = 0.0) -> tuple[list[PushRequest], list[PullRequest]]:
    core.begin_step(now)
    return core.end_step(now)


def test_start_pulls_every_block_in_full() -> None:
    core = worker(nb=3)
    assert core.start(0.0) == [PullRequest(j, -1, 0) for j in range(3)]
    assert core.outstanding == {0, 1, 2} and core.versions == [-1, -1, -1]
    assert not core.initialised and not core.ready(100.0)


def test_first_step_needs_every_block_but_not_b() -> None:
    core = worker(nb=3, b=1)
    core.start(0.0)
    core.on_block(0, 0)
    core.on_block(2, 4)
    assert not core.ready(0.0)  # block 1 never received
    core.on_block(1, 0)
    assert core.initialised and core.ready(0.0)
    assert core.begin_step(0.0) == StepPlan(0, (0, 0, 4), frozenset({0, 1, 2}))


def test_on_block_installs_only_newer_versions() -> None:
    core = started(worker(nb=2), version=3)
    core.outstanding.add(0)
    assert core.on_block(0, 3) is False  # equal: ignored
    assert core.on_block(0, 2) is False  # older: ignored
    assert core.versions == [3, 3] and core.ignored_replies == 2
    assert 0 not in core.outstanding  # but the request is answered
    assert core.on_block(0, 5) is True
    assert core.versions == [5, 3]


def test_ready_needs_b_blocks_refreshed_since_begin_step() -> None:
    core = started(worker(nb=4, b=2))
    core.begin_step(0.0)
    core.on_block(3, 1)  # arrives while computing: counts for the next step
    core.end_step(0.0)
    assert not core.ready(0.0)
    core.on_block(3, 2)
    assert not core.ready(0.0)  # the same block twice is one block
    core.on_block(1, 0)
    assert not core.ready(0.0)  # not newer: not a refresh
    core.on_block(1, 1)
    assert core.ready(0.0)
    plan = core.begin_step(0.0)
    assert plan.fresh == {1, 3} and plan.stale == {0, 2}
    assert plan.versions == (0, 1, 0, 2)


def test_not_ready_while_computing() -> None:
    core = started(worker(nb=2))
    core.begin_step(0.0)
    assert not core.ready(0.0)
    with pytest.raises(RuntimeError, match="begin_step called twice"):
        core.begin_step(0.0)
    core.end_step(0.0)
    with pytest.raises(RuntimeError, match="end_step called without begin_step"):
        core.end_step(0.0)


def test_pull_deadline_starts_with_at_least_one_block() -> None:
    core = started(worker("bsp", nb=3, pull_deadline=2.0))
    one_step(core, now=10.0)
    assert core.deadline() == 12.0
    assert not core.ready(100.0)  # nothing refreshed: the deadline alone is not enough
    core.on_block(2, 1)
    assert not core.ready(11.99)
    assert core.ready(12.0)
    assert core.begin_step(12.0).fresh == {2}


def test_no_pull_deadline_means_no_deadline() -> None:
    core = started(worker("bsp", nb=2))
    one_step(core, now=1.0)
    core.on_block(0, 1)
    assert core.deadline() is None and not core.ready(1e9)


def test_async_never_waits_for_fresh_blocks() -> None:
    core = started(worker("async", nb=2))
    _, pulls = one_step(core)
    assert [q.block for q in pulls] == [0, 1]
    for q in pulls:  # servers answer at once, here with nothing new
        core.on_block(q.block, 0)
    assert not core.refreshed and core.ready(0.0)
    core.begin_step(0.0)
    core.end_step(0.0)
    core.on_block(0, 1)
    core.on_block(1, 0)
    assert core.ready(0.0)


def test_end_step_pushes_every_block_with_the_versions_of_begin_step() -> None:
    core = started(worker(nb=3, b=1, fold_repeats=False))
    one_step(core)
    core.on_block(1, 1)
    plan = core.begin_step(5.0)
    core.on_block(0, 1)  # installed while computing: not what the gradient was computed on
    pushes, pulls = core.end_step(6.0)
    assert pushes == [PushRequest(0, 0, 1), PushRequest(1, 1, 1), PushRequest(2, 0, 1)]
    assert [p.base for p in pushes] == list(plan.versions)
    assert core.step == 2 and core.wait_started == 6.0
    # blocks 0 and 1 were answered (want > their new versions); block 2's request of step 0 still stands
    assert pulls == [PullRequest(0, 1, 2), PullRequest(1, 1, 2)]
    assert core.outstanding == {0, 1, 2}


def test_end_step_re_requests_only_blocks_without_an_outstanding_pull() -> None:
    core = started(worker(nb=4, b=1))
    _, pulls = one_step(core)
    assert pulls == [PullRequest(j, 0, 1) for j in range(4)]
    core.on_block(2, 1)
    _, pulls = one_step(core)
    assert pulls == [PullRequest(2, 1, 2)]
    assert core.outstanding == {0, 1, 2, 3}


def test_step_plan_counts_steps() -> None:
    core = started(worker("async", nb=1))
    for t in range(3):
        assert core.begin_step(0.0).step == t
        core.end_step(0.0)
        core.on_block(0, t + 1)
    assert core.step == 3


def test_rebase_forgets_a_restarted_servers_versions_and_pulls_its_blocks_again() -> None:
    """A server restored from its checkpoint may be behind this worker's copies: without the rebase the
    worker's pull (want > its version) would wait for versions that need this worker's own pushes."""
    core = started(worker(nb=4, b=4), version=7)
    one_step(core)
    for j in range(4):
        core.on_block(j, 8)
    assert core.rebase([2, 0]) == [PullRequest(0, -1, 1), PullRequest(2, -1, 1)]
    assert core.versions == [-1, 8, -1, 8] and not core.initialised and not core.ready(1.0)
    assert core.on_block(0, 3) and core.on_block(2, 3)  # the restored versions, below the old copies
    assert core.versions == [3, 8, 3, 8] and core.ready(1.0)
    assert core.begin_step(1.0) == StepPlan(1, (3, 8, 3, 8), frozenset(range(4)))
    with pytest.raises(RuntimeError, match="between steps"):
        core.rebase([1])


def test_the_synchronous_warm_up_waits_for_every_block_whatever_b() -> None:
    """ssp with b = 1 of 2: while a block it holds is in the warm-up a worker waits for both, as bsp (with
    b < B each worker could hold a stale block of a round that waits for another: a deadlock hypothesis
    found); from the warm-up's last version on, b = 1 is enough."""
    core = started(worker("ssp", nb=2, b=1, sync_warmup=2))
    one_step(core)
    core.on_block(0, 1)
    assert not core.ready(0.0)  # block 1 is still at v0 < 2
    core.on_block(1, 1)
    assert core.ready(0.0)
    one_step(core)
    core.on_block(0, 2)
    assert not core.ready(0.0)  # block 1 at v1: still warming
    core.on_block(1, 2)
    one_step(core)
    core.on_block(0, 3)
    assert core.ready(0.0)  # every block past the warm-up: b = 1
