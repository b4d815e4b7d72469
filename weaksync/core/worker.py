"""Worker protocol state machine (sans-I/O): local versions, outstanding pulls, pull quorum b, deadline.

The driver loop is: feed replies with `on_block` (install the data when it returns True); when `ready()`,
call `begin_step` (compute on the local θ), then `end_step` and send the pushes and pulls it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from .actions import PullRequest, PushRequest
from .policy import SyncPolicy


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
        self.outstanding: set[int] = set()
        self.refreshed: set[int] = set()
        self.step = 0  # steps completed
        self.wait_started: float | None = None
        self.plan: StepPlan | None = None
        self.ignored_replies = 0

    def start(self, now: float) -> list[PullRequest]:
        """Pull every block in full: all workers start from the servers' θ₀."""
        self.wait_started = now
        return self._pulls()

    @property
    def initialised(self) -> bool:
        return min(self.versions) >= 0

    def on_block(self, block: int, version: int) -> bool:
        """A reply arrived. True: install its data (it is newer than the local copy)."""
        self.outstanding.discard(block)
        if version <= self.versions[block]:
            self.ignored_replies += 1
            return False
        self.versions[block] = version
        self.refreshed.add(block)
        return True

    def ready(self, now: float) -> bool:
        """May the next step start? After the first full pull: b blocks refreshed since the last step
        began, or the pull deadline passed with at least one. In async mode servers answer pulls at once
        and a step waits only for those answers (which version they carry does not matter)."""
        if not self.initialised or self.plan is not None:
            return False
        if self.step == 0:
            return True
        if not self.policy.wait_for_pull:  # async: the answers, fresh or not, are enough
            return not self.outstanding
        if len(self.refreshed) >= self.policy.b:
            return True
        deadline = self.deadline()
        return deadline is not None and now >= deadline and len(self.refreshed) >= 1

    def deadline(self) -> float | None:
        """When the pull deadline of the current wait expires (None without a deadline)."""
        if self.policy.pull_deadline is None or self.wait_started is None:
            return None
        return self.wait_started + self.policy.pull_deadline

    def begin_step(self, now: float) -> StepPlan:
        """Snapshot the local versions the gradient will be computed from."""
        if self.plan is not None:
            raise RuntimeError("begin_step called twice without end_step")
        self.plan = StepPlan(self.step, tuple(self.versions), frozenset(self.refreshed))
        self.refreshed = set()
        return self.plan

    def end_step(self, now: float) -> tuple[list[PushRequest], list[PullRequest]]:
        """Push every block's gradient with the version it was computed from, then ask for newer blocks."""
        plan = self.plan
        if plan is None:
            raise RuntimeError("end_step called without begin_step")
        self.plan = None
        self.step += 1
        self.wait_started = now
        pushes = [PushRequest(j, base, plan.step) for j, base in enumerate(plan.versions)]
        return pushes, self._pulls()

    def _pulls(self) -> list[PullRequest]:
        wanted = [j for j in range(self.policy.num_blocks) if j not in self.outstanding]
        self.outstanding.update(wanted)
        return [PullRequest(j, self.versions[j], self.step) for j in wanted]
