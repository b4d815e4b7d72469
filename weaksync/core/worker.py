"""Worker protocol state machine (sans-I/O): local versions, outstanding pulls, pull quorum b, grace, deadline.

The driver loop is: feed replies with `on_block` (install the data when it returns True); when `ready()`,
call `begin_step` (compute on the local θ), then `end_step` and send the pushes and pulls it returns.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .actions import Pulls, Pushes
from .auto import Choice, QuorumTuner
from .policy import GRACE_HISTORY, SyncPolicy

COMPUTE_SMOOTHING = 0.2  # weight of the newest step's compute time in its moving average


@dataclass(frozen=True)
class StepPlan:
    """What one step computes on: the local versions, and which blocks were refreshed for it."""

    step: int
    versions: tuple[int, ...]
    fresh: frozenset[int]

    @property
    def stale(self) -> frozenset[int]:
        return frozenset(range(len(self.versions))) - self.fresh


class WorkerCore:
    def __init__(self, worker: int, policy: SyncPolicy):
        self.worker = worker
        self.policy = policy
        num_blocks = policy.num_blocks
        self.versions: list[int] = [-1] * num_blocks  # lv_j; -1 = never received
        self.all_blocks = tuple(range(num_blocks))
        self._initialised = False
        self.outstanding: set[int] = set()
        self.refreshed: set[int] = set()
        self.step = 0  # steps completed
        self.wait_started: float | None = None
        self.plan: StepPlan | None = None
        self.ignored_replies = 0
        self.compute: float | None = None  # moving average of begin_step → end_step
        self.began_at: float | None = None
        self.quorum_at: float | None = None  # when this wait had its b-th fresh block
        self.late_watch: tuple[float, set[int]] | None = None  # (quorum time, blocks still to come)
        self.late_after_quorum: list[deque[float]] = [deque(maxlen=GRACE_HISTORY) for _ in range(num_blocks)]
        self.b = policy.b  # the pull quorum in force (auto changes it)
        self.tuner = QuorumTuner("b", num_blocks, policy.b_min, num_blocks, start=policy.b) if policy.auto else None

    @property
    def choices(self) -> list[Choice]:
        """Every change of b so far (auto), with the figures that decided it."""
        return self.tuner.choices if self.tuner else []

    def resume_at(self, step: int) -> None:
        """A resumed run: this worker had completed `step` steps (its servers' checkpoint says so)."""
        if self.plan is not None or self.step:
            raise ValueError("resume_at: only before the first step")
        self.step = max(0, step)

    def rebase(self, blocks: Iterable[int]) -> Pulls:
        """A server came back from its checkpoint (or registered this worker anew): versions of its blocks
        this worker holds may be from updates the server lost, and pulls parked there are void. Forget them
        and pull those blocks again whatever their version, so no pull waits for a version the server will
        only make again after updates that wait for this worker."""
        if self.plan is not None:
            raise RuntimeError("rebase: only between steps")
        blocks = sorted(set(blocks))
        for j in blocks:
            self.versions[j] = -1
            self.refreshed.discard(j)
        if blocks:
            self._initialised = False
        self.outstanding.update(blocks)
        return Pulls(blocks, [-1] * len(blocks), self.step)

    def start(self, now: float) -> Pulls:
        """Pull every block in full: all workers start from the servers' θ₀."""
        self.wait_started = now
        return self._pulls()

    @property
    def initialised(self) -> bool:
        """Every block received once (kept once true: `ready` asks on every reply; only `rebase` undoes it)."""
        if not self._initialised:
            self._initialised = min(self.versions) >= 0
        return self._initialised

    def on_block(self, block: int, version: int, now: float | None = None) -> bool:
        """A reply arrived. True: install its data (it is newer than the local copy)."""
        return bool(self.on_blocks((block,), (version,), now))

    def on_blocks(self, blocks: Sequence[int], versions: Sequence[int], now: float | None = None) -> list[int]:
        """A reply message arrived with `blocks` at `versions`: the positions in it whose data to install
        (newer than the local copy). The same as `on_block` for each, in order, except that `auto`'s tuner
        takes the message's fresh blocks together, and the b in force after it decides whether the wait
        met its quorum with them."""
        held = self.versions
        self.outstanding.difference_update(blocks)
        fresh = [i for i, (j, v) in enumerate(zip(blocks, versions)) if v > held[j]]
        self.ignored_replies += len(blocks) - len(fresh)
        if not fresh:
            return fresh
        refreshed = self.refreshed
        before = len(refreshed)
        first = []
        for i in fresh:
            j = blocks[i]
            held[j] = versions[i]
            if j not in refreshed:
                refreshed.add(j)
                first.append(j)
        if now is None:
            return fresh
        if self.tuner is not None:  # the blocks are fresh for every step that ended before
            self._retune(self.tuner.arrive_many([blocks[i] for i in fresh], self.step, now, self.compute or 0.0))
        if first:
            if self.quorum_at is None and before < self._b() <= len(refreshed):  # the count passed b with them
                self.quorum_at = now
            self._note_late(first, now)
        return fresh

    def grace(self) -> float:
        """The longest a step waits for the remaining blocks once b are fresh: `policy.grace` × the compute time
        of a step (0 before the first step or without a grace)."""
        if self.policy.grace is None or self.compute is None:
            return 0.0
        return self.policy.grace * self.compute

    def awaited(self) -> set[int]:
        """The blocks still missing that are worth waiting the grace for: those that in most recent steps came
        within the grace after the b-th (measured also when the step did not wait for them). A block of a slow
        server or link is thus not waited for, and costs nothing per step; one that recovers is again."""
        cap = self.grace()
        if cap <= 0:
            return set()
        missing = set(range(self.policy.num_blocks)) - self.refreshed
        history = self.late_after_quorum
        return {j for j in missing if not history[j] or statistics.median(history[j]) <= cap}

    def ready(self, now: float) -> bool:
        """May the next step start? After the first full pull: b blocks refreshed since the last step
        began (and the grace for the others over, or all of them in), or the pull deadline passed with at
        least one. In async mode servers answer pulls at once and a step waits only for those answers
        (which version they carry does not matter)."""
        if not self.initialised or self.plan is not None:
            return False
        if self.step == 0:
            return True
        if not self.policy.wait_for_pull:  # async: the answers, fresh or not, are enough
            return not self.outstanding
        if len(self.refreshed) >= self._b():
            grace_end = self._grace_end()
            return grace_end is None or now >= grace_end
        deadline = self._pull_deadline()
        return deadline is not None and now >= deadline and len(self.refreshed) >= 1

    def deadline(self) -> float | None:
        """The next time `ready` may change without a reply arriving: the end of the grace for the remaining
        blocks, or the pull deadline of the current wait (None: neither)."""
        times = [t for t in (self._grace_end(), self._pull_deadline()) if t is not None]
        return min(times) if times else None

    def begin_step(self, now: float) -> StepPlan:
        """Snapshot the local versions the gradient will be computed from."""
        if self.plan is not None:
            raise RuntimeError("begin_step called twice without end_step")
        self.plan = StepPlan(self.step, tuple(self.versions), frozenset(self.refreshed))
        if self.late_watch is not None:  # the last wait's missing blocks did not come before this step
            for j in self.late_watch[1]:
                self.late_after_quorum[j].append(now - self.late_watch[0])
            self.late_watch = None
        if self.policy.grace is not None and self.quorum_at is not None:
            missing = set(range(self.policy.num_blocks)) - self.refreshed
            if missing:
                self.late_watch = (self._could_start(), missing)
        self.refreshed = set()
        self.quorum_at = None
        self.began_at = now
        return self.plan

    def end_step(self, now: float) -> tuple[Pushes, Pulls]:
        """Push every block's gradient with the version it was computed from, then ask for newer blocks. (A
        push to a round this worker already contributed to is added to its contribution by the server.)"""
        plan = self.plan
        if plan is None:
            raise RuntimeError("end_step called without begin_step")
        self.plan = None
        self.step += 1
        self.wait_started = now
        if self.began_at is not None:
            took = now - self.began_at
            self.compute = took if self.compute is None else self.compute + COMPUTE_SMOOTHING * (took - self.compute)
        if self.tuner is not None:  # how long until each block is fresh again after this step
            self.tuner.start_round(self.step, now)
        return Pushes(self.all_blocks, plan.versions, plan.step), self._pulls()

    def _retune(self, choice: Choice | None) -> None:
        if choice is not None:
            self.b = choice.value

    def _could_start(self) -> float:
        """When this wait had its b fresh blocks, or began if they came while the last step computed."""
        assert self.quorum_at is not None
        return max(self.quorum_at, self.wait_started or self.quorum_at)

    def _grace_end(self) -> float | None:
        if self.quorum_at is None or self.step == 0 or not self.awaited():
            return None
        return self._could_start() + self.grace()

    def _warming(self) -> bool:
        """In the synchronous warm-up: a block this worker holds is below `sync_warmup`. A step on a block that
        has not advanced then computes a gradient the warm-up's τ = 0 drops, while the round it was for waits
        for this worker's fresh one, which it computes only once b blocks advanced: with b < B each worker
        can hold a block of a round that waits for another (a deadlock the property test found). So, as bsp,
        the warm-up waits for every block: b = B, and no pull deadline."""
        return self.policy.sync_warmup > 0 and min(self.versions) < self.policy.sync_warmup

    def _b(self) -> int:
        """The pull quorum in force: every block in the warm-up, else b."""
        return self.policy.num_blocks if self._warming() else self.b

    def _pull_deadline(self) -> float | None:
        """None during the synchronous warm-up (`_warming`)."""
        if self.policy.pull_deadline is None or self.wait_started is None or self._warming():
            return None
        return self.wait_started + self.policy.pull_deadline

    def _note_late(self, blocks: list[int], now: float) -> None:
        """How long after the quorum these blocks (of one message) came, for `awaited` (which only a grace
        reads)."""
        if self.policy.grace is None:
            return
        history = self.late_after_quorum
        watch = self.late_watch
        if watch is not None:  # those that missed the step that began without them
            missed, rest = watch[1], []
            for j in blocks:
                if j in missed:
                    missed.discard(j)
                    history[j].append(now - watch[0])
                else:
                    rest.append(j)
            if not missed:
                self.late_watch = None
            blocks = rest
        if self.quorum_at is None or self.plan is not None:  # in before anyone needed them
            late = 0.0
        else:  # while this wait runs
            late = max(0.0, now - self._could_start())
        for j in blocks:
            history[j].append(late)

    def _pulls(self) -> Pulls:
        outstanding, versions = self.outstanding, self.versions
        if outstanding:
            wanted: Sequence[int] = [j for j in self.all_blocks if j not in outstanding]
            wants = [versions[j] for j in wanted]
        else:  # the usual case: every reply of the last step came
            wanted, wants = self.all_blocks, versions
        outstanding.update(wanted)
        return Pulls(wanted, wants, self.step)
