"""Server protocol state machine (sans-I/O): versions, push quorum, staleness, parked pulls, SSP clocks,
membership (hello, bye, departures, silence) and the run's step budget.

It never touches tensors or sockets: the driver validates payloads, performs Accept/Apply on the data and
sends what Send asks for. Time is passed in (`now`), so the simulator and tests control it.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .actions import (
    Accept,
    Apply,
    Drop,
    EndRun,
    Expired,
    Finished,
    Orphaned,
    Refuse,
    Revived,
    Send,
    ServerAction,
    Welcome,
)
from .auto import AUTO_MARGIN, Choice, QuorumTuner, staleness_bound
from .membership import Departure, Membership
from .policy import GRACE_HISTORY, SyncPolicy, within_staleness

PERIOD_SMOOTHING = 0.2  # weight of the newest round period in its moving average
STALENESS_SMOOTHING = 0.02  # weight of the newest accepted gradient's staleness in its moving average


@dataclass
class _LateWatch:
    """A round that closed without every live worker: when do the missing ones' gradients for it come?"""

    version: int  # the round's version (its contributions had base <= version)
    quorum_time: float  # when the round met k
    missing: set[int]


@dataclass(eq=False)
class _BlockState:
    """The protocol state of a group of blocks (`members`). Blocks that every event so far touched alike
    share one state, so a message's rules run once for the group: a server's blocks start as one group and
    stay one while pushes and pulls carry them together (the coalesced wire). An event that touches some
    members only, or differently, splits the group first (`ServerCore._split`): every rule stays per block."""

    members: tuple[int, ...] = ()
    version: int = 0
    contributors: dict[int, tuple[int, float, int]] = field(default_factory=dict)  # worker -> (base, weight, step)
    round_deadline: float | None = None  # push deadline
    quorum_time: float | None = None  # when this round met k (grace runs from here)
    grace_deadline: float | None = None
    last_apply: float | None = None
    opened: float | None = None  # auto: when this round's version was first served (the cut measures from here)
    late: _LateWatch | None = None
    gradients: int = 0  # pushes accepted into this round (a worker's repeated pushes each count)
    parked: dict[int, int] = field(default_factory=dict)  # worker -> want_gt
    fresh: dict[int, float] = field(default_factory=dict)  # auto: worker -> when its gradient on `version` came
    cut_deadline: float | None = None  # auto: when waiting for the next on-time gradient stops paying
    behind: set[int] = field(default_factory=set)  # auto: live workers the last round closed without, silent since
    riders: set[int] = field(default_factory=set)  # auto: contributors whose only gradient came late for the last round


class ServerCore:
    """The blocks one server owns, and the rules of DESIGN.md §2 for them."""

    def __init__(
        self,
        policy: SyncPolicy,
        blocks: Iterable[int],
        budget: int | None = None,
        *,
        registration: bool = False,
        expiry: float | None = None,
        orphan_after: float | None = None,
    ):
        """`registration`: pushes and pulls count only from workers that said hello (the runtime's rule;
        tests of the round rules may leave it off). `expiry`: seconds of silence after which a registered
        worker is no longer waited for. `orphan_after`: seconds with every worker gone before Orphaned."""
        self.policy = policy
        self.budget = budget  # worker steps of the whole run (None: no end but the driver's)
        self.ended = False
        self.registration = registration
        self.groups: list[_BlockState] = []  # the distinct states, by their first block
        self.blocks: dict[int, _BlockState] = {}  # block -> its group's state
        self._regroup({j: 0 for j in blocks})
        self.members = Membership(policy.num_workers, expiry, orphan_after)
        self.live: set[int] = self.members.live  # the same set: the workers waited for
        self.clocks: dict[int, int] = {w: 0 for w in self.live}  # steps completed, the SSP clock
        self.steps: Counter[int] = Counter()  # steps each worker did, as counted for the budget
        self.steps_total = 0  # their sum, kept as they grow (the budget is checked on every push and pull)
        self.starting: set[int] = set()  # said hello, not yet reported a clock: that report is where it starts
        self.drops: Counter[str] = Counter()
        self.accepted: Counter[int] = Counter()  # per worker
        self.dropped: Counter[int] = Counter()  # per worker
        self.updates = 0
        self.folded = 0  # pushes added to a round their worker had already contributed to
        self.gradients_applied = 0  # pushes that went into an update
        self.staleness = 0.0  # moving average of version - base over accepted gradients
        self.period: float | None = None  # moving average of the time between two updates of the clock block
        self.late_after_quorum: deque[float] = deque(maxlen=GRACE_HISTORY)  # seconds, for the grace rule
        self.k = policy.k  # the push quorum in force (auto changes it) ...
        self.tau = policy.tau  # ... and with it the staleness bound
        n = policy.num_workers
        self.tuner = QuorumTuner("k", n, policy.k_min, n, start=policy.k) if policy.auto else None
        self.clock_block = min(self.blocks, default=0)  # rounds are measured on one block (grace, auto)
        self.held: set[tuple[int, int]] = set()  # (group's first block, worker): warm-up pulls SSP holds

    @property
    def choices(self) -> list[Choice]:
        """Every change of k so far (auto), with the figures that decided it."""
        return self.tuner.choices if self.tuner else []

    # -- queries -------------------------------------------------------------------------------------

    def version(self, block: int) -> int:
        return self.blocks[block].version

    def quorum(self, block: int) -> int:
        """k, capped by the workers that can still contribute to this round (live ones and those who
        already did), so a departed worker never stalls the rest and an early finisher never cuts a
        round short."""
        state = self.blocks[block]
        return max(1, min(self._k(state), self._can_contribute(state)))

    def _regroup(self, versions: dict[int, int]) -> None:
        """Fresh states for blocks at these versions: one group per version."""
        by_version: dict[int, list[int]] = {}
        for j in sorted(versions):
            by_version.setdefault(versions[j], []).append(j)
        self.groups = [_BlockState(members=tuple(js), version=v) for v, js in by_version.items()]
        self.groups.sort(key=lambda state: state.members[0])
        self.blocks = {j: state for state in self.groups for j in state.members}

    def _split(self, state: _BlockState, blocks: tuple[int, ...]) -> _BlockState:
        """The state of `blocks` (distinct members of `state`'s group) on their own: the group itself when
        they are all of it, else a copy that they take out of the group (O(group) only then)."""
        if len(blocks) == len(state.members):
            return state
        taken = set(blocks)
        first = state.members[0]
        part = replace(
            state,
            members=tuple(j for j in state.members if j in taken),
            contributors=dict(state.contributors),
            late=None if state.late is None else replace(state.late, missing=set(state.late.missing)),
            parked=dict(state.parked),
            fresh=dict(state.fresh),
            behind=set(state.behind),
            riders=set(state.riders),
        )
        state.members = tuple(j for j in state.members if j not in taken)
        for j in part.members:
            self.blocks[j] = part
        self.groups.append(part)
        self.groups.sort(key=lambda s: s.members[0])
        for key in [key for key in self.held if key[0] == first]:  # held pulls: keyed by each part's first block
            self.held.discard(key)
            self.held.update((s.members[0], key[1]) for s in (state, part) if key[1] in s.parked)
        return part

    def _parts(
        self, blocks: tuple[int, ...], values: tuple[int, ...], problems: tuple[str | None, ...] | None
    ) -> list[tuple[_BlockState | None, tuple[int, ...], int, str | None]]:
        """A message's blocks cut into the parts its rules treat alike: blocks of one group with the same
        base (or want) and payload verdict, in the order of each part's first block. Unknown blocks form
        parts of their own (state None)."""
        whole = self.blocks.get(blocks[0]) if blocks else None
        if (  # the common case, found without a pass in Python: a whole group, one base, no bad payload
            whole is not None
            and tuple(blocks) == whole.members
            and values.count(values[0]) == len(values)
            and (problems is None or problems.count(None) == len(problems))
        ):
            return [(whole, whole.members, values[0], None)]
        parts: dict[tuple[int, int, str | None], tuple[_BlockState | None, list[int]]] = {}
        for j, value, problem in zip(blocks, values, problems or (None,) * len(blocks)):
            state = self.blocks.get(j)
            key = (id(state), value, problem)
            if key in parts:
                parts[key][1].append(j)
            else:
                parts[key] = (state, [j])
        return [(state, tuple(js), key[1], key[2]) for key, (state, js) in parts.items()]

    def _is_clock(self, state: _BlockState) -> bool:
        """Is this the group of the clock block, whose rounds grace and auto measure?"""
        return self.blocks.get(self.clock_block) is state

    def _can_contribute(self, state: _BlockState) -> int:
        """How many workers can be in this round: the live ones and those who already are. While every worker
        is live that is N, without a set union per push (O(N) each at a thousand workers)."""
        if len(self.live) == self.policy.num_workers:
            return len(self.live)
        return len(self.live | state.contributors.keys())

    def _warming(self, state: _BlockState) -> bool:
        """Is this block still in its synchronous warm-up (policy.sync_warmup: bsp's k = N, τ = 0, parked pulls)?"""
        return state.version < self.policy.sync_warmup

    def _k(self, state: _BlockState) -> int:
        """The push quorum in force for this block: every worker during the warm-up, else k."""
        return self.policy.num_workers if self._warming(state) else self.k

    def _counted(self, state: _BlockState) -> int:
        """Contributions that count toward k. Under auto (k > 1) a gradient that came too late for the last
        round (its worker was left behind, and it was computed on that round's version or older) is added to
        this one but does not count: counted, it would close this round without one of its on-time gradients,
        which then comes late for the next round, and so on (a chain of stale updates that backup's τ = 0
        avoids by dropping the late gradient, wasting it). A rider that then pushes on time counts."""
        return len(state.contributors) - len(state.riders)

    def _complete(self, state: _BlockState) -> bool:
        """Has this round what it waits for: every worker that can contribute, or k counted contributions
        (`quorum`, with `can` computed once)?"""
        if not state.contributors:
            return False
        can = self._can_contribute(state)
        return len(state.contributors) >= can or self._counted(state) >= max(1, min(self._k(state), can))

    def _tau(self, state: _BlockState) -> int | None:
        return 0 if self._warming(state) else self.tau

    def steps_done(self) -> int:
        """Steps completed by all workers together, as far as this server has heard (the run's budget
        counts these, so a slow worker's missing steps are made up by the others). A rejoining worker's
        jump to the clock it resumes from is not counted: the run never ends on steps nobody did."""
        return self.steps_total

    def next_deadline(self) -> float | None:
        """Earliest time `on_timer` has work to do (a push deadline, a grace, auto's cut, an expiry), or None."""
        times = [t for s in self.groups for t in (s.round_deadline, s.grace_deadline, s.cut_deadline) if t is not None]
        member_deadline = self.members.next_deadline()
        if member_deadline is not None:
            times.append(member_deadline)
        return min(times) if times else None

    def grace(self) -> float:
        """How long a round that met k waits for the remaining live workers (DESIGN.md §2, revised).

        At most `policy.grace` × the round period; and only if, in most recent rounds, the last worker's
        gradient came within that much after the k-th (its lateness is measured even when the round did not
        wait for it, from its gradient for that round arriving later). A worker that is persistently slow thus
        costs nothing per round, and one that recovers is waited for again. Not under auto: its cut decides
        within each round whether the next gradient is worth waiting for."""
        if self.policy.grace is None or self.policy.auto or self.period is None:
            return 0.0
        cap = self.policy.grace * self.period
        if not self.late_after_quorum:
            return cap
        return cap if statistics.median(self.late_after_quorum) <= cap else 0.0

    # -- events --------------------------------------------------------------------------------------

    def on_push(
        self,
        worker: int,
        block: int,
        base: int,
        step: int,
        now: float,
        problem: str | None = None,
    ) -> list[ServerAction]:
        """A gradient for `block` computed from version `base`; `problem` is the driver's verdict on the payload
        (None when shape, dtype and values are fine). Ends the run (EndRun, once) when the step budget is spent."""
        return self.on_push_many(worker, (block,), (base,), step, now, (problem,))

    def on_push_many(
        self,
        worker: int,
        blocks: tuple[int, ...],
        bases: tuple[int, ...],
        step: int,
        now: float,
        problems: tuple[str | None, ...] | None = None,
    ) -> list[ServerAction]:
        """One push message: a gradient for each of `blocks` computed from its `bases`. The same as a push per
        block in the message's order, except that the blocks of one group with one base and verdict are judged
        at once (one part): a message of a whole group costs one set of rules, whatever its size."""
        if len(set(blocks)) < len(blocks):  # a block twice: in order, one at a time
            verdicts = problems or (None,) * len(blocks)
            return [
                a
                for j, base, problem in zip(blocks, bases, verdicts)
                for a in self.on_push_many(worker, (j,), (base,), step, now, (problem,))
            ]
        actions: list[ServerAction] = []
        for state, part, base, problem in self._parts(blocks, bases, problems):
            if state is not None:
                state = self._split(state, part)
            refused = self._arrival(worker, part, base, state, now)
            if isinstance(refused, Drop):
                actions.append(refused)
                continue
            actions += refused + self._on_push(worker, state, part, base, step, now, problem) + self._end_if_spent()
        return actions

    def _end_if_spent(self) -> list[ServerAction]:
        """EndRun, once, as soon as the workers' steps reach the budget (a push's step or a pull's clock)."""
        if self.ended or self.budget is None or self.steps_done() < self.budget:
            return []
        self.ended = True  # every worker stops: the run's steps are done, whoever did them
        return [EndRun(self.steps_done())]

    def _on_push(
        self,
        worker: int,
        state: _BlockState | None,
        blocks: tuple[int, ...],
        base: int,
        step: int,
        now: float,
        problem: str | None,
    ) -> list[ServerAction]:
        """The rules for one part of a push (`blocks`: its group, or unknown blocks when `state` is None)."""
        version = state.version if state else -1
        was_behind = state is not None and worker in state.behind
        if state is not None:
            state.behind.discard(worker)  # it is back: waited for again
        reason = self._push_problem(worker, base, state, problem)
        if state is not None and reason in (None, "stale"):  # a late gradient, even one too late to use
            self._note_late(state, worker, base, now)
        if reason is not None:
            actions: list[ServerAction] = [self._drop(worker, blocks, base, version, reason)]
            if reason in ("stale", "duplicate", "malformed"):
                actions += self._advance_clock(worker, step + 1)  # unused, but the worker did finish the step
            if reason == "stale" and state is not None:
                actions += self._observe(worker, state, base, now)
            return actions
        assert state is not None
        staleness = version - base
        weight = 1.0 / (1 + staleness) if self.policy.weighting == "inverse" else 1.0
        if not state.contributors and self.policy.push_deadline is not None:
            state.round_deadline = now + self.policy.push_deadline
        actions: list[ServerAction] = [Accept(worker, state.members, base, version, weight)]
        self.accepted[worker] += len(state.members)
        state.gradients += 1
        for _ in state.members:  # the moving average takes each block's gradient, as a push per block would
            self.staleness += STALENESS_SMOOTHING * (staleness - self.staleness)
        if self.tuner is not None and base == version:  # before the rules below may close the round
            state.fresh.setdefault(worker, now)
            state.riders.discard(worker)
        elif self.tuner is not None and was_behind and worker not in state.contributors and self._k(state) > 1:
            state.riders.add(worker)
        if worker in state.contributors:  # fold_repeats: add to this worker's contribution to the round
            first, total, last_step = state.contributors[worker]
            state.contributors[worker] = (min(first, base), total + weight, max(last_step, step))
            self.folded += len(state.members)
        else:
            state.contributors[worker] = (base, weight, step)
            actions += self._close_if_due(state, now)
        if self.tuner is not None and state.contributors:  # the round is still open
            state.cut_deadline = self._cut_deadline(state, now)
            if state.cut_deadline is not None and state.cut_deadline <= now:
                actions += self._apply(state, now=now, cut=True)
        actions += self._advance_clock(worker, step + 1)
        actions += self._observe(worker, state, base, now)
        return actions

    def on_pull(self, worker: int, block: int, want_gt: int, clock: int, now: float) -> list[ServerAction]:
        """A request for `block` once newer than `want_gt`; answered now or parked until it is, or, once the
        run has ended, with Finished."""
        return self.on_pull_many(worker, (block,), (want_gt,), clock, now)

    def on_pull_many(
        self, worker: int, blocks: tuple[int, ...], wants: tuple[int, ...], clock: int, now: float
    ) -> list[ServerAction]:
        """One pull message: each of `blocks` once newer than its `wants`. The same as a pull per block in
        the message's order, with the blocks of one group and one want judged at once (see `on_push_many`)."""
        if len(set(blocks)) < len(blocks):  # a block twice: in order, one at a time
            return [a for j, want in zip(blocks, wants) for a in self.on_pull_many(worker, (j,), (want,), clock, now)]
        actions: list[ServerAction] = []
        for state, part, want, _ in self._parts(blocks, wants, None):
            if state is not None:
                state = self._split(state, part)
            actions += self._on_pull(worker, state, part, want, clock, now)
        return actions

    def _on_pull(
        self, worker: int, state: _BlockState | None, blocks: tuple[int, ...], want_gt: int, clock: int, now: float
    ) -> list[ServerAction]:
        """The rules for one part of a pull (`blocks`: its group, or unknown blocks when `state` is None)."""
        if state is None or worker not in self.clocks:
            reason = "unknown-block" if state is None else "unknown-worker"
            return [self._drop(worker, blocks, want_gt, state.version if state else -1, reason)]
        if self.ended:
            return [Finished(worker)]
        arrival = self._arrival(worker, blocks, want_gt, state, now)
        if isinstance(arrival, Drop):
            return [arrival]
        actions: list[ServerAction] = arrival
        actions += self._advance_clock(worker, clock)
        ended = self._end_if_spent()
        if ended:
            return actions + ended
        if self._servable(worker, state, want_gt):
            state.parked.pop(worker, None)
            if state.opened is None:  # version 0: the round opens as the first worker starts on it
                state.opened = now
            actions.append(Send(worker, state.members, state.version))
        else:
            state.parked[worker] = want_gt
            if self.policy.ssp_slack is not None:  # only SSP holds pulls: the per-block pull path of the rest
                self._note_held(worker, state, want_gt)
                if self.held:  # this worker now waits for a round: a held pull may be what that round needs
                    actions += self._recheck_held()
        return actions

    def on_timer(self, now: float) -> list[ServerAction]:
        """Apply every block whose push deadline passed with at least one accepted contribution; stop waiting
        for workers silent past the expiry; tell when every worker has long been gone."""
        actions: list[ServerAction] = []
        for state in self.groups:
            if state.round_deadline is not None and state.round_deadline <= now and state.contributors:
                actions += self._apply(state, by_deadline=True, now=now)
            elif state.grace_deadline is not None and state.grace_deadline <= now and state.contributors:
                actions += self._apply(state, by_deadline=False, now=now)
            elif state.cut_deadline is not None and state.cut_deadline <= now and state.contributors:
                actions += self._apply(state, now=now, cut=True)
        for worker, silent_for in self.members.expired(now):
            self.members.depart(worker, "silent")
            actions.append(Expired(worker, silent_for))
            actions += self._stop_waiting(worker, now, forget_pulls=False)
        waited = self.members.orphan_wait(now)
        if waited is not None:
            actions.append(Orphaned(waited))
        return actions

    # -- membership ----------------------------------------------------------------------------------

    def on_hello(
        self, worker: int, now: float, problem: str | None = None, process: int | None = None
    ) -> list[ServerAction]:
        """A worker registers (at its start, or a restarted process). One that had departed is waited for
        again from the slowest live clock, so SSP does not hold the others back for it. `problem`: the
        driver's verdict on the hello (a model layout that differs from this server's). `process`: which
        process of the worker sent it; a hello from one already reported dead is ignored."""
        if problem is None and not self.members.valid(worker):
            problem = f"worker id {worker} is outside 0..{self.policy.num_workers - 1}: check cluster.workers"
        if problem is not None:
            return [Refuse(worker, problem)]
        if self.members.from_dead_process(worker, process):
            return []
        rejoined = self.members.register(worker, now)
        self.starting.add(worker)
        for state in self.groups:  # a new process: what the old one asked for is void
            state.parked.pop(worker, None)
        if rejoined:
            self._start_waiting(worker)
            self.clocks[worker] = min((self.clocks[w] for w in self.live if w != worker), default=0)
        return [Welcome(worker, self.clocks[worker], rejoined)]

    def on_heartbeat(self, worker: int, now: float) -> list[ServerAction]:
        """A sign of life outside the data messages (a worker computing a long step is still there)."""
        if not self.members.valid(worker):
            return []
        return self._revive_if_silent(worker, now)

    def on_bye(self, worker: int, now: float | None = None) -> list[ServerAction]:
        """The worker's clean goodbye, after its last pushes."""
        return self._depart(worker, "bye", now)

    def worker_left(self, worker: int, now: float | None = None, process: int | None = None) -> list[ServerAction]:
        """The launcher reports the worker (its `process`, when known) dead: stop waiting for it. Without
        `now` a round that met its quorum closes at once, grace or not. Only a new process's hello brings
        it back."""
        return self._depart(worker, "dead", now, process)

    def _depart(self, worker: int, why: Departure, now: float | None, process: int | None = None) -> list[ServerAction]:
        if not self.members.depart(worker, why, process):
            return []
        return self._stop_waiting(worker, now, forget_pulls=True)

    def _arrival(
        self, worker: int, blocks: tuple[int, ...], base: int, state: _BlockState | None, now: float
    ) -> list[ServerAction] | Drop:
        """A push or pull from `worker`: refused before its hello (with registration), else it shows the
        worker is alive."""
        if self.registration and worker not in self.members.registered:
            return self._drop(worker, blocks, base, state.version if state else -1, "unregistered")
        return self._revive_if_silent(worker, now)

    def _revive_if_silent(self, worker: int, now: float) -> list[ServerAction]:
        if not self.members.seen(worker, now):
            return []
        self._start_waiting(worker)
        return [Revived(worker)]

    def _start_waiting(self, worker: int) -> None:
        """The worker counts toward quorums and the SSP clock again (it can only lower the slowest clock,
        so nothing parked becomes servable)."""
        if self.tuner is not None:
            self.tuner.set_members(self.live, None)

    def _stop_waiting(self, worker: int, now: float | None, forget_pulls: bool) -> list[ServerAction]:
        """The worker no longer counts toward quorums and the SSP clock. A dead worker's parked pulls are
        forgotten; a silent one keeps them (it may be only slow, and would wait for their replies)."""
        actions: list[ServerAction] = []
        if self.tuner is not None:
            actions += self._retune(self.tuner.set_members(self.live, now), now)
        for state in list(self.groups):
            if forget_pulls:
                state.parked.pop(worker, None)
            state.behind.discard(worker)
            if state.late is not None:
                state.late.missing.discard(worker)
            if self._complete(state):
                actions += self._close_if_due(state, now) if now is not None else self._apply(state)
        if self.policy.ssp_slack is not None:
            actions += self._release_parked()
        return actions

    def checkpoint(self) -> dict[str, Any]:
        """The protocol state a restarted server needs: each block's version and each worker's steps (so
        the run's budget, SSP and the LR schedule go on where they were). Rounds in progress are not kept:
        their gradients are lost, at most one round per block."""
        return {
            "versions": {j: state.version for j, state in self.blocks.items()},
            "clocks": dict(self.clocks),
            "steps": dict(self.steps),
            "updates": self.updates,
        }

    def restore(self, doc: dict[str, Any]) -> None:
        """Take over a checkpoint of this server's blocks (before any worker registered)."""
        versions = {int(j): int(v) for j, v in doc["versions"].items()}
        if set(versions) != set(self.blocks):
            raise ValueError(f"checkpoint holds blocks {sorted(versions)}, this server owns {sorted(self.blocks)}")
        self._regroup(versions)
        for w, clock in doc["clocks"].items():
            if int(w) in self.clocks:
                self.clocks[int(w)] = int(clock)
        for w, steps in doc.get("steps", doc["clocks"]).items():  # older checkpoints: the clocks were the count
            if int(w) in self.clocks:
                self.steps[int(w)] = int(steps)
        self.steps_total = sum(self.steps.values())
        self.updates = int(doc.get("updates", 0))

    # -- rules ---------------------------------------------------------------------------------------

    def _push_problem(self, worker: int, base: int, state: _BlockState | None, problem: str | None) -> str | None:
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
        if not within_staleness(self._tau(state), state.version, base):
            return "stale"
        if worker in state.contributors and not self.policy.fold_repeats:
            return "duplicate"
        return None

    def _drop(self, worker: int, blocks: tuple[int, ...], base: int, version: int, reason: str) -> Drop:
        """A Drop of `blocks`, counted once per block."""
        self.drops[reason] += len(blocks)
        if 0 <= worker < self.policy.num_workers:
            self.dropped[worker] += len(blocks)
        return Drop(worker, blocks, base, version, reason)

    def _close_if_due(self, state: _BlockState, now: float) -> list[ServerAction]:
        """Apply once every worker that can contribute did, or k did and the grace (if any) is over."""
        if len(state.contributors) >= self._can_contribute(state):
            return self._apply(state, now=now)
        if not self._complete(state):
            return []
        if state.quorum_time is None:
            state.quorum_time = now
            wait = self.grace()
            if wait <= 0:
                return self._apply(state, now=now)
            state.grace_deadline = now + wait
        if state.grace_deadline is None or now >= state.grace_deadline:
            return self._apply(state, now=now)
        return []

    def _cut_deadline(self, state: _BlockState, now: float) -> float | None:
        """auto: when this round stops waiting for its next on-time gradient (docs/guarantees.md, `auto`).

        The round opened at t0 (the last update; for version 0, when it was first served, so the first round
        does not wait for a slow worker's first step either) and its q-th gradient computed on this version came a_q
        later. Closing now is worth q gradients in a_q; waiting for one more, q + 1 in a_(q+1). Waiting pays
        only while a_(q+1) < (q + 1) / q · a_q, so the round closes at that point, with the tuner's margin
        for a one-round estimate (AUTO_MARGIN), if no one else came. A worker that the last round closed
        without and that has not pushed since is not waited for at all: it is still computing an old step,
        so the round closes (now) once every other live worker is in. This reacts within a round (a spike,
        a worker that just became slow) where the tuner needs several; with nothing slow the next gradient
        comes well before the cut. Stale gradients ride along but do not start the clock: one sent just
        after t0 would otherwise close the round at once. Never below k_min contributors."""
        q = len(state.fresh)
        if q == 0 or state.opened is None or self._counted(state) < self.policy.k_min or self._warming(state):
            return None
        if q + len(state.behind) >= len(self.live) and all(w in state.fresh or w in state.behind for w in self.live):
            return now
        waited = max(next(reversed(state.fresh.values())) - state.opened, 0.0)
        return state.opened + (1 + AUTO_MARGIN) * (q + 1) / q * waited

    def _note_late(self, state: _BlockState, worker: int, base: int, now: float) -> None:
        """A missing worker's gradient for a round that closed without it: how late after k it came."""
        watch = state.late if self._is_clock(state) else None  # a split's copy: not measured
        if watch is None or worker not in watch.missing or base != watch.version:
            return
        watch.missing.discard(worker)
        if not watch.missing:
            self.late_after_quorum.append(now - watch.quorum_time)
            state.late = None

    def _observe(self, worker: int, state: _BlockState, base: int, now: float) -> list[ServerAction]:
        """auto: a gradient on version `base` of the clock block arrived (after this push's rules ran, so the
        push was judged by the k and τ in force when it came)."""
        if self.tuner is None or not self._is_clock(state):
            return []
        return self._retune(self.tuner.arrive(worker, base, now), now)

    def _retune(self, choice: Choice | None, now: float | None) -> list[ServerAction]:
        """auto: the tuner moved k (core/auto.py); τ follows, and rounds the new k says are complete close."""
        if choice is None:
            return []
        self.k = choice.value
        self.tau = staleness_bound(self.policy.num_workers, self.k)
        actions: list[ServerAction] = []
        for state in list(self.groups):
            if self._complete(state):
                actions += self._apply(state, now=now)
        return actions

    def _apply(
        self, state: _BlockState, by_deadline: bool = False, now: float | None = None, cut: bool = False
    ) -> list[ServerAction]:
        """Close the round. A cut (auto) is this round's choice of quorum: the m gradients it holds are a
        full quorum of m for the LR (as a backup quorum is), not a short round of k; it counts as a
        deadline (`by_deadline`) in the update records."""
        by_deadline = by_deadline or cut
        contributors = tuple((w, base, weight) for w, (base, weight, _) in state.contributors.items())
        step = max(s for _, _, s in state.contributors.values())
        # the LR needs the quorum only when it differs from the policy's: auto's k, or the warm-up's N
        quorum = self._k(state) if self._warming(state) or self.tuner is not None else None
        if cut:
            quorum = len(contributors)
        if now is not None:
            self._record_round(state, now)
        state.version += 1
        if self.tuner is not None and now is not None and self._is_clock(state):
            self.tuner.start_round(state.version, now)  # how long until each worker pushes on this version
        self.gradients_applied += state.gradients * len(state.members)
        state.gradients = 0
        if self.tuner is not None:  # who this round closed without (O(N) only when it did, or a worker left)
            everyone = len(self.live) == self.policy.num_workers  # then N contributors are all of them
            full = len(state.contributors) >= len(self.live) and (everyone or self.live <= state.contributors.keys())
            state.behind = set() if full else self.live - state.contributors.keys()
        state.contributors = {}
        state.round_deadline = None
        state.quorum_time = None
        state.grace_deadline = None
        state.fresh = {}
        state.riders = set()
        state.cut_deadline = None
        self.updates += len(state.members)
        actions: list[ServerAction] = [
            Apply(state.members, state.version, contributors, step, by_deadline, round(self.staleness, 6), quorum)
        ]
        actions += self._answer_parked(state)
        return actions

    def _record_round(self, state: _BlockState, now: float) -> None:
        """Round period and lateness figures for `grace`, taken as a round closes at `now`."""
        last, state.last_apply, state.opened = state.last_apply, now, now
        if not self._is_clock(state):  # rounds are measured on one block, as auto's are
            return
        if last is not None:
            period = now - last
            self.period = period if self.period is None else self.period + PERIOD_SMOOTHING * (period - self.period)
        if self.policy.grace is None:
            return
        if state.late is not None:  # the previous round's missing worker never came: later than this
            self.late_after_quorum.append(now - state.late.quorum_time)
            state.late = None
        missing = self.live - state.contributors.keys()
        if state.quorum_time is not None:
            if missing:
                state.late = _LateWatch(state.version, state.quorum_time, set(missing))
            else:
                self.late_after_quorum.append(now - state.quorum_time)

    def _servable(self, worker: int, state: _BlockState, want_gt: int, floor: float | None = None) -> bool:
        """May this pull be answered now; `floor` is the slowest clock if the caller already knows it."""
        warming = self._warming(state)
        immediate = self.policy.immediate_pull and not warming
        if not (state.version > want_gt or immediate):
            return False
        slack = self.policy.ssp_slack
        if slack is None:
            return True
        if self.clocks[worker] - (self._min_clock() if floor is None else floor) <= slack:
            return True
        return warming and self._round_waits_for(worker, state, slack)

    def _round_waits_for(self, worker: int, state: _BlockState, slack: int) -> bool:
        """SSP in the synchronous warm-up (k = N, τ = 0): is every worker that holds this one back parked
        here, waiting for the round that only this one's gradient can close? Then holding its pull is a
        deadlock, not a bound: its steps on old versions were dropped as stale, which moved its clock
        ahead of theirs without helping the round (found by the property test). A push deadline would end
        the round without it, so then the bound holds."""
        if self.policy.push_deadline is not None or worker in state.contributors:
            return False
        limit = self.clocks[worker] - slack
        return all(state.parked.get(w, -1) >= state.version for w in self.live if self.clocks[w] < limit)

    def _answer_parked(self, state: _BlockState) -> list[ServerAction]:
        # the slowest clock once for all parked pulls (it cannot move here): O(N) per update, not O(N²)
        floor = self._min_clock() if self.policy.ssp_slack is not None and state.parked else None
        ready = [w for w, want in state.parked.items() if self._servable(w, state, want, floor)]
        for w in ready:
            del state.parked[w]
        if self.policy.ssp_slack is not None and self._warming(state):
            for w, want in state.parked.items():
                self._note_held(w, state, want)
        return [Send(w, state.members, state.version) for w in ready]

    def _note_held(self, worker: int, state: _BlockState, want_gt: int) -> None:
        """Remember a warm-up pull that only SSP's clock bound holds (its version is there): `_recheck_held`
        looks at it again as clocks move and workers park, which a plain SSP hold need not wait for."""
        if self._warming(state) and state.version > want_gt:
            self.held.add((state.members[0], worker))

    def _recheck_held(self) -> list[ServerAction]:
        """Answer the held warm-up pulls that `_round_waits_for` now says must go (O(1) when none are held)."""
        actions: list[ServerAction] = []
        for first, worker in sorted(self.held):
            state = self.blocks[first]
            want = state.parked.get(worker)
            if want is None or not self._warming(state):  # answered, forgotten, or under the plain SSP rule now
                self.held.discard((first, worker))
            elif self._servable(worker, state, want):
                del state.parked[worker]
                self.held.discard((first, worker))
                actions.append(Send(worker, state.members, state.version))
        return actions

    def _min_clock(self) -> float:
        """The slowest clock SSP waits for; with nobody waited for, nothing holds a pull back."""
        return min((self.clocks[w] for w in self.live), default=float("inf"))

    def _advance_clock(self, worker: int, clock: int) -> list[ServerAction]:
        """Record a worker's progress (steps completed); under SSP, if the slowest moved, release the pulls
        it was holding back. The first clock after a hello is where that process starts, not steps done."""
        starting = worker in self.starting
        self.starting.discard(worker)
        if clock <= self.clocks[worker]:
            return []
        if not starting:
            self.steps[worker] += clock - self.clocks[worker]
            self.steps_total += clock - self.clocks[worker]
        if self.policy.ssp_slack is None:
            self.clocks[worker] = clock
            return []
        before = self._min_clock()
        self.clocks[worker] = clock
        actions = self._release_parked() if self._min_clock() > before else []
        return actions + self._recheck_held() if self.held else actions

    def _release_parked(self) -> list[ServerAction]:
        actions: list[ServerAction] = []
        for state in self.groups:
            actions += self._answer_parked(state)
        return actions
