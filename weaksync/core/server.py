"""Server protocol state machine (sans-I/O): versions, push quorum, staleness, parked pulls, SSP clocks.

It never touches tensors or sockets: the driver validates payloads, performs Accept/Apply on the data and
sends what Send asks for. Time is passed in (`now`), so the simulator and tests control it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from .actions import Accept, Apply, Drop, Send, ServerAction
from .policy import SyncPolicy


@dataclass
class _BlockState:
    version: int = 0
    contributors: dict[int, tuple[int, float, int]] = field(default_factory=dict)  # worker -> (base, weight, step)
    round_deadline: float | None = None
    parked: dict[int, int] = field(default_factory=dict)  # worker -> want_gt


class ServerCore:
    """The blocks one server owns, and the rules of DESIGN.md §2 for them."""

    def __init__(self, policy: SyncPolicy, blocks: Iterable[int]):
        self.policy = policy
        self.blocks: dict[int, _BlockState] = {j: _BlockState() for j in blocks}
        self.live: set[int] = set(range(policy.num_workers))
        self.clocks: dict[int, int] = {w: 0 for w in self.live}
        self.drops: Counter[str] = Counter()
        self.accepted: Counter[int] = Counter()  # per worker
        self.dropped: Counter[int] = Counter()  # per worker
        self.updates = 0

    # -- queries -------------------------------------------------------------------------------------

    def version(self, block: int) -> int:
        return self.blocks[block].version

    def quorum(self, block: int) -> int:
        """k, capped by the workers that can still contribute to this round (live ones and those who
        already did), so a departed worker never stalls the rest and an early finisher never cuts a
        round short."""
        state = self.blocks[block]
        return max(1, min(self.policy.k, len(self.live | state.contributors.keys())))

    def steps_done(self) -> int:
        """Steps completed by all workers together, as far as this server has heard (the run's budget
        counts these, so a slow worker's missing steps are made up by the others)."""
        return sum(self.clocks.values())

    def next_deadline(self) -> float | None:
        """Earliest time `on_timer` has work to do (a push deadline), or None."""
        times = [s.round_deadline for s in self.blocks.values() if s.round_deadline is not None]
        return min(times) if times else None

    # -- events --------------------------------------------------------------------------------------

    def on_push(
        self, worker: int, block: int, base: int, step: int, now: float, problem: str | None = None
    ) -> list[ServerAction]:
        """A gradient for `block` computed from version `base`; `problem` is the driver's verdict on the
        payload (None when shape, dtype and values are fine)."""
        state = self.blocks.get(block)
        version = state.version if state else -1
        reason = self._push_problem(worker, block, base, state, problem)
        if reason is not None:
            actions: list[ServerAction] = [self._drop(worker, block, base, version, reason)]
            if reason in ("stale", "duplicate", "malformed"):
                actions += self._advance_clock(worker, step + 1)  # unused, but the worker did finish the step
            return actions
        assert state is not None
        staleness = version - base
        weight = 1.0 / (1 + staleness) if self.policy.weighting == "inverse" else 1.0
        if not state.contributors and self.policy.push_deadline is not None:
            state.round_deadline = now + self.policy.push_deadline
        state.contributors[worker] = (base, weight, step)
        self.accepted[worker] += 1
        actions = [Accept(worker, block, base, version, weight)]
        if len(state.contributors) >= self.quorum(block):
            actions += self._apply(block, state, by_deadline=False)
        actions += self._advance_clock(worker, step + 1)
        return actions

    def on_pull(self, worker: int, block: int, want_gt: int, clock: int, now: float) -> list[ServerAction]:
        """A request for `block` once newer than `want_gt`; answered now or parked until it is."""
        state = self.blocks.get(block)
        if state is None or worker not in self.clocks:
            reason = "unknown-block" if state is None else "unknown-worker"
            return [self._drop(worker, block, want_gt, state.version if state else -1, reason)]
        actions: list[ServerAction] = []
        actions += self._advance_clock(worker, clock)
        if self._servable(worker, state, want_gt):
            state.parked.pop(worker, None)
            actions.append(Send(worker, block, state.version))
        else:
            state.parked[worker] = want_gt
        return actions

    def on_timer(self, now: float) -> list[ServerAction]:
        """Apply every block whose push deadline passed with at least one accepted contribution."""
        actions: list[ServerAction] = []
        for block, state in self.blocks.items():
            if state.round_deadline is not None and state.round_deadline <= now and state.contributors:
                actions += self._apply(block, state, by_deadline=True)
        return actions

    def worker_left(self, worker: int) -> list[ServerAction]:
        """A worker is gone (clean exit, launcher notice or heartbeat timeout): stop waiting for it."""
        if worker not in self.live:
            return []
        self.live.discard(worker)
        actions: list[ServerAction] = []
        for block, state in self.blocks.items():
            state.parked.pop(worker, None)
            if state.contributors and len(state.contributors) >= self.quorum(block):
                actions += self._apply(block, state, by_deadline=False)
        if self.policy.ssp_slack is not None:
            actions += self._release_parked()
        return actions

    def worker_joined(self, worker: int) -> None:
        """A (re)started worker takes part again from the slowest clock, so SSP does not wait for it."""
        if 0 <= worker < self.policy.num_workers and worker not in self.live:
            self.live.add(worker)
            self.clocks[worker] = min((self.clocks[w] for w in self.live if w != worker), default=0)

    # -- rules ---------------------------------------------------------------------------------------

    def _push_problem(
        self, worker: int, block: int, base: int, state: _BlockState | None, problem: str | None
    ) -> str | None:
        if state is None:
            return "unknown-block"
        if worker not in self.clocks:
            return "unknown-worker"
        if problem is not None:
            return "malformed"
        if worker not in self.live:
            return "left"
        if base > state.version:
            return "future"
        if not self.policy.accepts(state.version, base):
            return "stale"
        if worker in state.contributors:
            return "duplicate"
        return None

    def _drop(self, worker: int, block: int, base: int, version: int, reason: str) -> Drop:
        self.drops[reason] += 1
        if 0 <= worker < self.policy.num_workers:
            self.dropped[worker] += 1
        return Drop(worker, block, base, version, reason)

    def _apply(self, block: int, state: _BlockState, by_deadline: bool) -> list[ServerAction]:
        contributors = tuple((w, base, weight) for w, (base, weight, _) in state.contributors.items())
        step = max(s for _, _, s in state.contributors.values())
        state.version += 1
        state.contributors = {}
        state.round_deadline = None
        self.updates += 1
        actions: list[ServerAction] = [Apply(block, state.version, contributors, step, by_deadline)]
        actions += self._answer_parked(block, state)
        return actions

    def _servable(self, worker: int, state: _BlockState, want_gt: int) -> bool:
        if not (state.version > want_gt or self.policy.immediate_pull):
            return False
        slack = self.policy.ssp_slack
        return slack is None or self.clocks[worker] - self._min_clock() <= slack

    def _answer_parked(self, block: int, state: _BlockState) -> list[ServerAction]:
        ready = [w for w, want in state.parked.items() if self._servable(w, state, want)]
        for w in ready:
            del state.parked[w]
        return [Send(w, block, state.version) for w in ready]

    def _min_clock(self) -> int:
        return min((self.clocks[w] for w in self.live), default=0)

    def _advance_clock(self, worker: int, clock: int) -> list[ServerAction]:
        """Record a worker's progress (steps completed); under SSP, if the slowest moved, release the pulls
        it was holding back."""
        if clock <= self.clocks[worker]:
            return []
        if self.policy.ssp_slack is None:
            self.clocks[worker] = clock
            return []
        before = self._min_clock()
        self.clocks[worker] = clock
        return self._release_parked() if self._min_clock() > before else []

    def _release_parked(self) -> list[ServerAction]:
        actions: list[ServerAction] = []
        for block, state in self.blocks.items():
            actions += self._answer_parked(block, state)
        return actions
