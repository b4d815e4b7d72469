"""In-memory, I/O-free driver of WorkerCore and ServerCore instances for the protocol tests.

Messages travel on FIFO channels, one per (sender, receiver) pair, like one ZeroMQ connection: a
worker's pushes, pulls and "bye" reach a server in the order they were sent, and a server's replies
reach a worker in order; the channels themselves interleave at random. A seeded scheduler picks the
next event among everything that could happen now:

* deliver the head of a non-empty channel,
* let a ready worker begin a step (and, with ``split_steps``, end it as a separate later event, so
  replies can arrive while it computes),
* jump virtual time to one of the pending deadlines (push deadlines of servers, pull deadlines of
  workers), after which every server's ``on_timer`` runs.

A worker that did its steps (or stops early) says "bye" after its last pushes, like the runtime; a
crash is announced by a launcher notice on a channel of its own, which may overtake the worker's
messages still in flight (their pushes are then dropped as "left").

Every event is checked against DESIGN.md §2 as it happens (see ``InvariantViolation``): exact quorum,
averages over exactly the accepted contributions, no contribution applied twice, staleness bound,
versions only grow, pulls answered only with something newer, ready() rules of the worker. A run ends
when every worker did its steps and every channel is empty; if nothing can happen before that,
``Deadlock`` is raised with the state of every core.

Optional ``Hooks`` let a test attach tensors to the messages (see tests/test_bsp_equivalence.py).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from weaksync.core import (
    Accept,
    Apply,
    Drop,
    Send,
    ServerCore,
    StepPlan,
    SyncPolicy,
    TensorSpec,
    WorkerCore,
    build_layout,
)
from weaksync.core.actions import DROP_REASONS, EndRun, Expired, Finished, Revived, Welcome
from weaksync.core.auto import AUTO_MARGIN


class Deadlock(AssertionError):
    """No event can happen, yet some worker has not finished its steps (or the event budget ran out)."""


class InvariantViolation(AssertionError):
    """A rule of DESIGN.md §2 was broken by an event; the message holds the recent trace."""


# -- messages ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushMsg:
    worker: int
    block: int
    base: int
    step: int
    payload: Any = None
    life: int = 0  # which process of the worker sent it (a restart starts a new one)


@dataclass(frozen=True)
class PullMsg:
    worker: int
    block: int
    want_gt: int
    clock: int


@dataclass(frozen=True)
class ByeMsg:
    """The worker's own goodbye, FIFO after its last pushes (clean exit)."""

    worker: int


@dataclass(frozen=True)
class LeaveMsg:
    """The launcher's / heartbeat's notice that a worker is gone: another connection, so it may overtake
    the worker's own messages still in flight (even its hello)."""

    worker: int
    life: int = 0


@dataclass(frozen=True)
class BlockMsg:
    server: int
    block: int
    version: int
    payload: Any = None
    life: int = 0  # the worker's process the server was answering (a restarted one never sees the old replies)


@dataclass(frozen=True)
class HelloMsg:
    """A worker process registers (with `membership`): at its start, FIFO before its first pulls."""

    worker: int
    life: int = 0


@dataclass(frozen=True)
class WelcomeMsg:
    server: int
    clock: int
    life: int


@dataclass(frozen=True)
class DoneMsg:
    """The server's end of the run (its step budget is spent): the worker stops and says bye."""

    server: int


Message = PushMsg | PullMsg | ByeMsg | LeaveMsg | BlockMsg | HelloMsg | WelcomeMsg | DoneMsg


# -- records -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contribution:
    worker: int
    base: int
    weight: float
    step: int
    tau: int | None = None  # the staleness bound in force when it was accepted (auto moves it)
    life: int = 0  # the worker's process that computed it


@dataclass(frozen=True)
class AppliedUpdate:
    """One Apply as the harness saw it: who performed it, when, how many workers the server had live."""

    server: int
    action: Apply
    time: float
    live: int
    contributions: tuple[Contribution, ...]


@dataclass(frozen=True)
class Stop:
    """Worker leaves after completing `after` steps: "bye" (clean, FIFO) or "crash" (silent; a launcher
    notice reaches each server later, possibly before the worker's in-flight messages)."""

    after: int
    how: Literal["bye", "crash"] = "bye"
    restart: bool = False  # a crashed worker's process is started again later (it says hello, rejoins)


class Hooks:
    """Tensor side of the driver; the default does nothing (pure protocol runs)."""

    def compute(self, worker: int, plan: StepPlan) -> Any:
        """Called at begin_step: compute the step's gradient on the worker's local θ."""
        return None

    def push_payload(self, worker: int, block: int, computed: Any) -> Any:
        return None

    def accept(self, server: int, action: Accept, payload: Any) -> None:
        pass

    def apply(self, server: int, action: Apply) -> None:
        pass

    def reply_payload(self, server: int, block: int, version: int) -> Any:
        return None

    def install(self, worker: int, block: int, payload: Any) -> None:
        pass


def block_owners(num_blocks: int, num_servers: int, elements_per_block: int = 7) -> list[int]:
    """Server of each block, from the real layout of a θ of `num_blocks` equal blocks."""
    spec = TensorSpec("theta", (num_blocks * elements_per_block,), "float32", False)
    layout = build_layout([spec], num_blocks, num_servers)
    return [b.server for b in layout.blocks]


Node = str  # "w3", "s1", "launcher"


def parse_script(text: str) -> list[tuple]:
    """Events from a compact script: "w0>s1" / "s1>w0" / "launcher>s0" deliver the head of that channel,
    "step2" is ("begin", 2) (a whole step when split_steps is off), "end2" ends it, "tick@3.5" jumps time."""
    events: list[tuple] = []
    for token in text.split():
        if ">" in token:
            src, dst = token.split(">")
            events.append(("deliver", (src, dst)))
        elif token.startswith("step"):
            events.append(("begin", int(token[4:])))
        elif token.startswith("end"):
            events.append(("end", int(token[3:])))
        elif token.startswith("tick@"):
            events.append(("tick", float(token[5:])))
        else:
            raise ValueError(f"unknown script token {token!r}")
    return events


def _normalise(event: Sequence) -> tuple:
    """Scripts may spell a delivery ("deliver", "w0", "s1") or ("deliver", ("w0", "s1"))."""
    event = tuple(event)
    if event[0] == "deliver" and len(event) == 3:
        return ("deliver", (event[1], event[2]))
    if event[0] == "deliver":
        return ("deliver", tuple(event[1]))
    return event


class Harness:
    """Drive N WorkerCores and S ServerCores to completion under a random event order."""

    def __init__(
        self,
        policy: SyncPolicy,
        owners: Sequence[int],
        steps: int | Sequence[int],
        *,
        seed: int = 0,
        split_steps: bool = True,
        stops: dict[int, Stop] | None = None,
        hooks: Hooks | None = None,
        max_events: int = 200_000,
        trace_len: int = 40,
        durations: Sequence[float] | None = None,
        membership: bool = False,
        expiry: float | None = None,
        budget: int | None = None,
    ) -> None:
        """`durations`: seconds each worker's step takes (the clock then advances to let it end; auto's tuner
        sees those times); None: a step may end at once, time moves only for deadlines.

        `membership`: workers say hello first and servers count only registered workers; `expiry` makes
        servers stop waiting for a worker silent that long (virtual time; a worker's next message brings it
        back); `budget`: servers end the run after that many worker steps and workers stop on their 'done'."""
        assert len(owners) == policy.num_blocks
        self.policy = policy
        self.owners = list(owners)
        self.num_servers = max(owners) + 1
        n = policy.num_workers
        self.targets = [steps] * n if isinstance(steps, int) else list(steps)
        self.stops = dict(stops or {})
        self.rng = random.Random(seed)
        self.split_steps = split_steps
        self.hooks = hooks or Hooks()
        self.max_events = max_events
        self.now = 0.0
        self.tau_in_force = policy.tau
        self.durations = list(durations) if durations is not None else None
        self.step_ends: dict[int, float] = {}  # worker -> when its step may end (with durations)
        self.events = 0
        self.trace: deque[str] = deque(maxlen=trace_len)
        self.history: list[tuple] = []

        self.membership = membership or expiry is not None or budget is not None
        self.budget = budget
        self.servers = [
            ServerCore(
                policy,
                [j for j, s in enumerate(owners) if s == srv],
                budget,
                registration=self.membership,
                expiry=expiry,
            )
            for srv in range(self.num_servers)
        ]
        self.workers = [WorkerCore(w, policy) for w in range(n)]
        self.channels: dict[tuple[Node, Node], deque[Message]] = {}
        for w in range(n):
            for s in range(self.num_servers):
                self.channels[(f"w{w}", f"s{s}")] = deque()
                self.channels[(f"s{s}", f"w{w}")] = deque()
        for s in range(self.num_servers):
            self.channels[("launcher", f"s{s}")] = deque()

        # what the harness expects the cores to be doing
        self.version = [0] * policy.num_blocks  # per block, as announced by Apply
        self.rounds: list[list[Contribution]] = [[] for _ in range(policy.num_blocks)]
        self.round_opened: list[float | None] = [None] * policy.num_blocks
        self.last_update: list[float | None] = [None] * policy.num_blocks  # when each block last advanced
        self.first_served: list[float | None] = [None] * policy.num_blocks  # when version 0 was first sent
        self.on_time: list[dict[int, float]] = [{} for _ in range(policy.num_blocks)]  # auto: fresh arrivals
        self.behind: list[set[int]] = [set() for _ in range(policy.num_blocks)]  # auto: left out, silent since
        self.riders: list[set[int]] = [set() for _ in range(policy.num_blocks)]  # auto: late, not counted toward k
        self.was_behind = False  # the push being handled came from a worker left behind (auto)
        self.k_in_force = policy.k  # the k in force when the push being handled came
        self.pending_pulls: dict[tuple[int, int], int] = {}  # (worker, block) -> want_gt, at the server
        self.applied: set[tuple[int, int, int]] = set()  # (worker, block, step)
        self.computed: dict[int, Any] = {}
        self.departed: set[int] = set()  # workers that stopped (target reached, bye or crash)
        self.crashed: set[int] = set()
        self.left: list[set[int]] = [set() for _ in range(self.num_servers)]  # not waited for, as each server was told
        self.life = [0] * n  # each worker's process: a restart starts the next
        self.joining: dict[int, dict[int, int]] = {}  # restarted worker -> welcome clock per server so far
        self.restarted: set[int] = set()
        self.told_done: set[int] = set()  # workers that got a 'done' (they stop after the step they compute)
        self.steps_computed = 0  # by every worker process together: what the run's budget may count
        self.first_step = [0] * n  # where each worker's current process started (a resumed clock)
        self.end_runs: list[tuple[int, EndRun]] = []
        self.suspended: set[int] = set()  # workers some server stopped waiting for, for a while (expired)
        self.hellos: list[dict[int, int]] = [{} for _ in range(self.num_servers)]  # the process each server knows

        # what happened, for the tests' own checks
        self.updates: list[AppliedUpdate] = []
        self.accepts: list[tuple[int, Accept]] = []
        self.drops: Counter[str] = Counter()
        self.plans: list[list[StepPlan]] = [[] for _ in range(n)]
        self.sends = 0
        self.ignored_replies = 0

        for w, core in enumerate(self.workers):
            if self.membership:
                self._send_hello(w)
            self._send_pulls(w, core.start(self.now))
            if self.stops.get(w, Stop(-1)).after == 0:
                self._stop(w)

    # -- public --------------------------------------------------------------------------------------

    def run(self) -> Harness:
        """Play random events until every worker finished and every channel drained; returns self."""
        while True:
            enabled = self.enabled()
            if not enabled:
                if self.finished():
                    break
                raise Deadlock(f"no event can happen at t={self.now}\n{self.describe()}")
            if self.events >= self.max_events:
                raise Deadlock(f"no end after {self.events} events (livelock?)\n{self.describe()}")
            self.do(self.rng.choice(enabled))
        self._final_checks()
        return self

    def replay(self, script: Sequence[tuple] | str) -> Harness:
        """Play a scripted sequence of events (as in `history`, or `parse_script` text); each must be
        enabled when its turn comes."""
        for event in parse_script(script) if isinstance(script, str) else script:
            event = _normalise(event)
            if event not in self.enabled():
                raise ValueError(f"scripted event {event} cannot happen now\n{self.describe()}")
            self.do(event)
        return self

    def finished(self) -> bool:
        """Every worker stopped and no message is in flight."""
        return len(self.departed) == len(self.workers) and not self.joining and not any(self.channels.values())

    def stuck(self) -> bool:
        """Nothing can happen, yet the run is not over: a deadlock."""
        return not self.enabled() and not self.finished()

    def describe(self) -> str:
        """State of every core and the recent trace, for failure messages."""
        lines = [f"policy={self.policy}"]
        for w, c in enumerate(self.workers):
            lines.append(
                f"  w{w}: step={c.step}/{self.targets[w]} departed={w in self.departed} versions={c.versions} "
                f"refreshed={sorted(c.refreshed)} outstanding={sorted(c.outstanding)} "
                f"computing={c.plan is not None} deadline={c.deadline()}"
            )
        for s, core in enumerate(self.servers):
            for j, st in core.blocks.items():
                lines.append(
                    f"  s{s} block {j}: v={st.version} contributors={st.contributors} parked={st.parked} "
                    f"deadline={st.round_deadline}"
                )
            lines.append(f"  s{s}: live={sorted(core.live)} clocks={core.clocks} drops={dict(core.drops)}")
        busy = {f"{a}->{b}": len(q) for (a, b), q in self.channels.items() if q}
        lines.append(f"  channels: {busy}")
        lines.append("  trace (oldest first):")
        lines += [f"    {t}" for t in self.trace]
        return "\n".join(lines)

    # -- scheduling ----------------------------------------------------------------------------------

    def enabled(self) -> list[tuple]:
        """Every event that could happen now: ("deliver", (src, dst)), ("begin", w), ("end", w), ("tick", t)."""
        events: list[tuple] = [("deliver", key) for key, q in self.channels.items() if q]
        notices = {m.worker for (src, _), q in self.channels.items() if src == "launcher" for m in q}
        for w in sorted(self.crashed - self.restarted - notices):  # the launcher restarts after its notice
            if self.stops[w].restart and w in self.departed:
                events.append(("restart", w))
        for w, core in enumerate(self.workers):
            if w in self.departed or w in self.joining:
                continue
            if core.plan is not None:
                if self.now >= self.step_ends.get(w, 0.0):
                    events.append(("end", w))
            elif core.ready(self.now):
                events.append(("begin", w))
        ticks = self._future_deadlines()
        if self.durations is not None:  # timed steps: messages and steps take no time, so the clock moves
            ticks = [] if events else ticks[:1]  # only when nothing else can happen, to the next thing that does
        events += [("tick", t) for t in ticks]
        return events

    def _future_deadlines(self) -> list[float]:
        times = [d for core in self.servers if (d := core.next_deadline()) is not None and d > self.now]
        times += [t for w, t in self.step_ends.items() if t > self.now and w not in self.departed]
        for w, core in enumerate(self.workers):
            if w in self.departed or core.plan is not None or core.ready(self.now):
                continue
            d = core.deadline()
            if d is not None and d > self.now:
                times.append(d)
        return sorted(set(times))

    def do(self, event: tuple) -> None:
        """Perform one event (see `enabled`) and record it in `history`."""
        self.events += 1
        self.history.append(event)
        kind = event[0]
        if kind == "deliver":
            src, dst = event[1]
            msg = self.channels[event[1]].popleft()
            self.trace.append(f"t={self.now:g} {src}->{dst} {msg}")
            if dst.startswith("s"):
                self._at_server(int(dst[1:]), msg)
            else:
                self._at_worker(int(dst[1:]), msg)
        elif kind == "begin":
            self._begin(event[1])
            if not self.split_steps and self.durations is None:
                self._end(event[1])
        elif kind == "end":
            self._end(event[1])
        elif kind == "restart":
            self._restart(event[1])
        else:
            self.now = event[1]
            self.trace.append(f"t={self.now:g} tick")
            for s, core in enumerate(self.servers):
                self._server_actions(s, core.on_timer(self.now))
                self._check_server_state(s)

    def _fail(self, what: str) -> None:
        raise InvariantViolation(f"{what}\n{self.describe()}")

    def _check(self, cond: bool, what: str) -> None:
        if not cond:
            self._fail(what)

    # -- workers -------------------------------------------------------------------------------------

    def _send_pulls(self, w: int, pulls: list) -> None:
        for q in pulls:
            self.channels[(f"w{w}", f"s{self.owners[q.block]}")].append(PullMsg(w, q.block, q.want_gt, q.clock))

    def _send_hello(self, w: int) -> None:
        for s in range(self.num_servers):
            self.channels[(f"w{w}", f"s{s}")].append(HelloMsg(w, self.life[w]))

    def _restart(self, w: int) -> None:
        """A new process for a crashed worker: it says hello to every server and starts once all welcomed it."""
        self.restarted.add(w)
        self.departed.discard(w)
        self.life[w] += 1
        self.workers[w] = WorkerCore(w, self.policy)
        self.joining[w] = {}
        self.computed.pop(w, None)
        self.step_ends.pop(w, None)
        self.trace.append(f"t={self.now:g} w{w} restarts (process {self.life[w]})")
        self._send_hello(w)

    def _at_worker(self, w: int, msg: Message) -> None:
        if w in self.departed or getattr(msg, "life", self.life[w]) != self.life[w]:
            return  # the process is gone: the reply is lost
        if isinstance(msg, WelcomeMsg):
            self._welcomed(w, msg)
            return
        if isinstance(msg, DoneMsg):
            self.told_done.add(w)
            if self.workers[w].plan is None:
                self._stop(w, done=True)
            return
        assert isinstance(msg, BlockMsg)
        if w in self.joining:
            return  # a reply to the old process's pull
        core = self.workers[w]
        before = core.versions[msg.block]
        self._check(msg.block in core.outstanding, f"w{w} got block {msg.block} it had not asked for")
        fresh = core.on_block(msg.block, msg.version)
        self._check(
            fresh == (msg.version > before), f"w{w} on_block({msg.block}, v{msg.version}) over v{before} -> {fresh}"
        )
        self._check(
            core.versions[msg.block] == max(before, msg.version), f"w{w} local version of {msg.block} went back"
        )
        self._check(msg.block not in core.outstanding, f"w{w} still waits for {msg.block} after its reply")
        if fresh:
            self.hooks.install(w, msg.block, msg.payload)
        else:
            self.ignored_replies += 1

    def _welcomed(self, w: int, msg: WelcomeMsg) -> None:
        if w not in self.joining:
            return  # the first process started at once (its hello is FIFO before its pulls)
        self.joining[w][msg.server] = msg.clock
        if len(self.joining[w]) < self.num_servers:
            return
        clock = max(self.joining.pop(w).values())
        core = self.workers[w]
        core.resume_at(clock)
        self.first_step[w] = clock
        self.plans[w] = []
        self.trace.append(f"t={self.now:g} w{w} resumes at step {clock}")
        self._send_pulls(w, core.start(self.now))
        if core.step >= self.targets[w]:
            self._stop(w)

    def _begin(self, w: int) -> None:
        core, p = self.workers[w], self.policy
        versions, refreshed, deadline = tuple(core.versions), frozenset(core.refreshed), core.deadline()
        plan = core.begin_step(self.now)
        if self.durations is not None:
            self.step_ends[w] = self.now + self.durations[w] * (0.5 + self.rng.random())
        self.trace.append(
            f"t={self.now:g} w{w} begin step {plan.step} versions={plan.versions} fresh={sorted(plan.fresh)}"
        )
        self._check(
            plan.step == self.first_step[w] + len(self.plans[w]),
            f"w{w} plan step {plan.step} after {len(self.plans[w])} plans from step {self.first_step[w]}",
        )
        self._check(plan.versions == versions and plan.fresh == refreshed, f"w{w} plan {plan} is not its local state")
        self._check(min(versions) >= 0, f"w{w} computed before its first full pull")
        if p.wait_for_pull and plan.step > 0:
            by_deadline = deadline is not None and self.now >= deadline and len(refreshed) >= 1
            self._check(
                len(refreshed) >= core.b or by_deadline,
                f"w{w} began step {plan.step} with {len(refreshed)} < b={core.b} fresh blocks, before its deadline",
            )
        if p.ssp_slack is not None and p.b == p.num_blocks and p.pull_deadline is None and p.wait_for_pull:
            # a reply that arrives mid-step counts for the next step but answers a pull sent one clock
            # earlier, so an interleaved (threaded) driver may run one step further ahead
            slack = p.ssp_slack + (1 if self.split_steps else 0)
            for other, oc in enumerate(self.workers):  # a worker that was not waited for at times may lag more
                if other not in self.departed and other not in self.suspended and other not in self.joining:
                    self._check(
                        oc.step >= plan.step - slack,
                        f"SSP: w{w} began step {plan.step} while w{other} completed only {oc.step} "
                        f"(slack {p.ssp_slack})",
                    )
        self.computed[w] = self.hooks.compute(w, plan)
        self.plans[w].append(plan)

    def _end(self, w: int) -> None:
        core = self.workers[w]
        plan = core.plan
        assert plan is not None
        outstanding = set(core.outstanding)
        pushes, pulls = core.end_step(self.now)
        self.trace.append(f"t={self.now:g} w{w} end step {plan.step}")
        self._check(
            [(q.block, q.base, q.step) for q in pushes]
            == [(j, plan.versions[j], plan.step) for j in range(self.policy.num_blocks)],
            f"w{w} pushes {pushes} do not match its plan {plan}",
        )
        self._check(
            sorted(q.block for q in pulls) == sorted(set(range(self.policy.num_blocks)) - outstanding),
            f"w{w} pulls {pulls} with {sorted(outstanding)} outstanding",
        )
        self._check(
            all(q.want_gt == core.versions[q.block] and q.clock == core.step for q in pulls),
            f"w{w} pulls {pulls} do not ask for newer than its versions {core.versions}",
        )
        computed = self.computed.pop(w)
        self.steps_computed += 1
        for q in pushes:
            payload = self.hooks.push_payload(w, q.block, computed)
            push = PushMsg(w, q.block, q.base, q.step, payload, self.life[w])
            self.channels[(f"w{w}", f"s{self.owners[q.block]}")].append(push)
        self._send_pulls(w, pulls)
        stop = None if w in self.restarted else self.stops.get(w)
        if core.step >= self.targets[w] or (stop is not None and core.step >= stop.after) or w in self.told_done:
            self._stop(w, done=w in self.told_done)

    def _stop(self, w: int, done: bool = False) -> None:
        """The worker exits: clean bye on its own connections, or a crash noticed later by the launcher."""
        self.departed.add(w)
        self.joining.pop(w, None)
        stop = None if w in self.restarted or done else self.stops.get(w)
        crash = stop is not None and stop.how == "crash" and self.workers[w].step >= stop.after
        for s in range(self.num_servers):
            if crash:
                self.channels[("launcher", f"s{s}")].append(LeaveMsg(w, self.life[w]))
            else:
                self.channels[(f"w{w}", f"s{s}")].append(ByeMsg(w))
        if crash:
            self.crashed.add(w)
        how = "crashes" if crash else "says bye"
        self.trace.append(f"t={self.now:g} w{w} {how} after {self.workers[w].step} steps")

    # -- servers -------------------------------------------------------------------------------------

    def _at_server(self, s: int, msg: Message) -> None:
        core = self.servers[s]
        if isinstance(msg, HelloMsg):
            for j in core.blocks:  # a new process: the old one's pulls are void
                self.pending_pulls.pop((msg.worker, j), None)
            self.hellos[s][msg.worker] = msg.life
            self._server_actions(s, core.on_hello(msg.worker, self.now, process=msg.life))
            dead = msg.life < self.life[msg.worker] or msg.worker in self.crashed - self.restarted
            self._check(
                (msg.worker in core.live) != (dead and msg.worker in self.left[s]),
                f"s{s} after the hello of w{msg.worker}'s process {msg.life}: live={sorted(core.live)}",
            )
        elif isinstance(msg, PushMsg):
            warming = self.version[msg.block] < self.policy.sync_warmup  # bsp's τ = 0 in the warm-up
            self.tau_in_force = 0 if warming else core.tau  # auto may change τ after judging this push
            self.k_in_force = self.policy.num_workers if warming else core.k
            self.was_behind = msg.worker in self.behind[msg.block]
            self.behind[msg.block].discard(msg.worker)
            actions = core.on_push(msg.worker, msg.block, msg.base, msg.step, self.now)
            self._server_actions(s, actions, push=msg)
        elif isinstance(msg, PullMsg):
            key = (msg.worker, msg.block)
            self._check(key not in self.pending_pulls, f"w{msg.worker} pulled block {msg.block} twice")
            self.pending_pulls[key] = msg.want_gt
            version = core.version(msg.block)
            actions = core.on_pull(msg.worker, msg.block, msg.want_gt, msg.clock, self.now)
            sent = [a for a in actions if isinstance(a, Send) and (a.worker, a.block) == key]
            p = self.policy
            if p.ssp_slack is None and msg.worker in core.live and not core.ended:
                should = self.immediate(version) or version > msg.want_gt
                self._check(bool(sent) == should, f"s{s} pull {msg} at v{version}: answered={bool(sent)}")
            self._server_actions(s, actions)
        else:
            assert isinstance(msg, (ByeMsg, LeaveMsg))
            self.left[s].add(msg.worker)
            if isinstance(msg, ByeMsg):
                self._server_actions(s, core.on_bye(msg.worker))
            else:
                self._server_actions(s, core.worker_left(msg.worker, process=msg.life))
            self._check(msg.worker not in core.live, f"s{s} still counts w{msg.worker} live after it left")
            for j in core.blocks:
                self.pending_pulls.pop((msg.worker, j), None)
        self._check_server_state(s)

    def _server_actions(self, s: int, actions: list, push: PushMsg | None = None) -> None:
        p = self.policy
        for a in actions:
            if isinstance(a, Accept):
                self._on_accept(s, a, push)
            elif isinstance(a, Apply):
                self._on_apply(s, a)
            elif isinstance(a, Send):
                if self.first_served[a.block] is None:
                    self.first_served[a.block] = self.now
                want = self.pending_pulls.pop((a.worker, a.block), None)
                self._check(
                    want is not None or a.worker in self.departed,
                    f"s{s} sent block {a.block} to w{a.worker}, which has no pull pending",
                )
                self._check(
                    a.version == self.version[a.block],
                    f"s{s} sent v{a.version} of block {a.block}, which is at v{self.version[a.block]}",
                )
                self._check(
                    want is None or self.immediate(a.version) or a.version > want,
                    f"s{s} answered a pull for > v{want} with v{a.version}",
                )
                self.sends += 1
                payload = self.hooks.reply_payload(s, a.block, a.version)
                life = self.hellos[s].get(a.worker, 0)
                self.channels[(f"s{s}", f"w{a.worker}")].append(BlockMsg(s, a.block, a.version, payload, life))
            elif isinstance(a, Drop):
                self._on_drop(s, a, push)
            elif isinstance(a, Welcome):
                self.left[s].discard(a.worker)
                life = self.hellos[s][a.worker]
                self.channels[(f"s{s}", f"w{a.worker}")].append(WelcomeMsg(s, a.clock, life))
            elif isinstance(a, Expired):
                self.left[s].add(a.worker)
                self.suspended.add(a.worker)
                self._check(a.worker not in self.servers[s].live, f"s{s} expired w{a.worker} but still waits for it")
            elif isinstance(a, Revived):
                self.left[s].discard(a.worker)
            elif isinstance(a, EndRun):
                self._check(
                    self.budget is not None and self.budget <= a.steps <= self.steps_computed,
                    f"s{s} ended the run at {a.steps} steps: budget {self.budget}, {self.steps_computed} computed",
                )
                self.end_runs.append((s, a))
                for w in sorted(self.servers[s].members.registered):
                    self.channels[(f"s{s}", f"w{w}")].append(DoneMsg(s))
            elif isinstance(a, Finished):
                self.channels[(f"s{s}", f"w{a.worker}")].append(DoneMsg(s))
            else:
                self._fail(f"s{s} returned an unknown action {a!r}")

    def _on_accept(self, s: int, a: Accept, push: PushMsg | None) -> None:
        p = self.policy
        self._check(
            push is not None and (a.worker, a.block, a.base) == (push.worker, push.block, push.base),
            f"s{s} accepted {a} for message {push}",
        )
        assert push is not None
        v = self.version[a.block]
        self._check(a.version == v, f"s{s} accepted {a} while the block is at v{v}")
        tau = self.tau_in_force
        self._check(a.base <= v and (tau is None or v - a.base <= tau), f"s{s} accepted {a} beyond tau={tau}")
        weight = 1.0 / (1 + v - a.base) if p.weighting == "inverse" else 1.0
        self._check(a.weight == weight, f"s{s} accepted {a} with weight {a.weight}, expected {weight}")
        rnd = self.rounds[a.block]
        self._check(
            p.fold_repeats or all(c.worker != a.worker for c in rnd),
            f"s{s} accepted w{a.worker} twice for v{v} of {a.block}",
        )
        self._check(a.worker in self.servers[s].live, f"s{s} accepted {a} from a worker it knows left")
        self._check(
            (a.worker, push.life, a.block, push.step) not in self.applied, f"s{s} accepted an applied push {push}"
        )
        if not rnd:
            self.round_opened[a.block] = self.now
        if a.base == v:
            self.on_time[a.block].setdefault(a.worker, self.now)
            self.riders[a.block].discard(a.worker)
        elif p.auto and self.was_behind and self.k_in_force > 1 and all(c.worker != a.worker for c in rnd):
            self.riders[a.block].add(a.worker)  # late for the last round: rides along, does not count toward k
        rnd.append(Contribution(a.worker, a.base, a.weight, push.step, tau, push.life))
        self.accepts.append((s, a))
        self.hooks.accept(s, a, push.payload)

    def _on_apply(self, s: int, a: Apply) -> None:
        p, core = self.policy, self.servers[s]
        rnd = self.rounds[a.block]
        self._check(a.version == self.version[a.block] + 1, f"s{s} {a} does not follow v{self.version[a.block]}")
        merged: dict[int, tuple[int, float]] = {}  # a worker's repeated pushes to a round add up
        for c in rnd:
            base, weight = merged.get(c.worker, (c.base, 0.0))
            merged[c.worker] = (min(base, c.base), weight + c.weight)
        self._check(
            a.contributors == tuple((w, base, weight) for w, (base, weight) in merged.items()),
            f"s{s} {a} does not average exactly the accepted contributions {rnd}",
        )
        self._check(len({w for w, _, _ in a.contributors}) == len(a.contributors), f"s{s} {a} has a worker twice")
        self._check(len(rnd) >= 1, f"s{s} applied {a} with no contribution")
        self._check(a.step == max(c.step for c in rnd), f"s{s} {a}: step is not the largest contributor step")
        for c in rnd:
            key = (c.worker, c.life, a.block, c.step)
            self._check(key not in self.applied, f"s{s} {a} applies w{c.worker}'s step {c.step} a second time")
            self.applied.add(key)
            self._check(c.tau is None or a.version - 1 - c.base <= c.tau, f"s{s} {a} holds a too stale contribution")
        # k, capped by the workers that can still contribute to this round: the live ones and those who
        # already did (a departed worker never stalls the rest, an early finisher never cuts a round short)
        can_contribute = (set(range(p.num_workers)) - self.left[s]) | set(merged)
        quorum = max(1, min(p.k if a.quorum is None else a.quorum, len(can_contribute)))
        if a.by_deadline:  # the push deadline, or auto's cut
            opened = self.round_opened[a.block]
            by_push_deadline = (
                p.push_deadline is not None and opened is not None and self.now >= opened + p.push_deadline
            )
            self._check(
                by_push_deadline or (p.auto and self._cut_was_due(a, core.live, len(merged), quorum)),
                f"s{s} {a} by deadline before the deadline (round opened at {opened}, now {self.now}; on-time "
                f"arrivals {list(self.on_time[a.block].values())} after the last update at {self.last_update[a.block]})",
            )
        elif p.grace is None and not p.auto:
            self._check(len(merged) == quorum, f"s{s} {a}: {len(merged)} contributors, quorum is {quorum}")
        else:  # k met; with a grace the round may wait for more, never for more than can contribute; under
            # auto a round that had more than a newly lowered k closes with all it has, and riders do not count
            counted = len(merged) - len(self.riders[a.block])
            everyone_in = set(merged) >= core.live  # every worker the server still waits for is in
            self._check(
                (quorum <= counted or everyone_in) and len(merged) <= len(can_contribute),
                f"s{s} {a}: {len(merged)} contributors ({counted} counted toward k), quorum is {quorum} of "
                f"{len(can_contribute)}",
            )
        self.updates.append(AppliedUpdate(s, a, self.now, len(core.live), tuple(rnd)))
        self.version[a.block] = a.version
        self.rounds[a.block] = []
        self.round_opened[a.block] = None
        self.last_update[a.block] = self.now
        self.on_time[a.block] = {}
        self.riders[a.block] = set()
        self.behind[a.block] = set(core.live) - set(merged) if p.auto else set()
        self.hooks.apply(s, a)

    def _cut_was_due(self, a: Apply, live: set[int], contributors: int, quorum: int) -> bool:
        """auto's cut (ServerCore._cut_deadline), restated: at least k_min and at most k contributors, one of
        them on time, and either every live worker the last round did not leave behind is in, or the next
        on-time gradient is later than (1 + margin) (q + 1) / q times the q-th's wait, counted from the last
        update (the first round: from when version 0 was first sent)."""
        opened = self.last_update[a.block] if self.last_update[a.block] is not None else self.first_served[a.block]
        fresh = list(self.on_time[a.block].values())
        q = len(fresh)
        if not (q >= 1 and opened is not None and self.policy.k_min <= contributors <= quorum):
            return False
        everyone_in = live - self.behind[a.block] <= self.on_time[a.block].keys()
        return everyone_in or self.now >= opened + (1 + AUTO_MARGIN) * (q + 1) / q * (fresh[-1] - opened) - 1e-12

    def _on_drop(self, s: int, a: Drop, push: PushMsg | None) -> None:
        p = self.policy
        self._check(a.reason in DROP_REASONS, f"s{s} dropped with unknown reason {a}")
        self.drops[a.reason] += 1
        v = self.version[a.block]
        if a.reason == "stale":
            tau = self.tau_in_force
            self._check(push is not None and tau is not None and v - push.base > tau, f"s{s} wrongly stale: {a}")
        elif a.reason == "duplicate":
            self._check(
                push is not None and not p.fold_repeats and any(c.worker == a.worker for c in self.rounds[a.block]),
                f"s{s} wrongly duplicate: {a}",
            )
        elif a.reason in ("left", "unregistered"):  # a dead process's messages, after the launcher's notice
            self._check(a.worker in self.crashed, f"s{s} dropped {a}, but the worker's bye comes after its pushes")
        else:
            self._fail(f"s{s} dropped a well-formed message: {a}")

    def immediate(self, version: int) -> bool:
        """Does a block at `version` answer pulls at once (async, after its synchronous warm-up)?"""
        return self.policy.immediate_pull and version >= self.policy.sync_warmup

    def _check_server_state(self, s: int) -> None:
        core, p = self.servers[s], self.policy
        live_clocks = [core.clocks[w] for w in core.live]
        slowest = min(live_clocks) if live_clocks else 0
        for j, st in core.blocks.items():
            self._check(st.version == self.version[j], f"s{s} block {j} at v{st.version}, Apply said {self.version[j]}")
            self._check(
                len(st.contributors) == len({c.worker for c in self.rounds[j]}),
                f"s{s} block {j} holds other contributions",
            )
            for w, want in st.parked.items():
                held_by_ssp = p.ssp_slack is not None and core.clocks[w] - slowest > p.ssp_slack
                if held_by_ssp and st.version < p.sync_warmup and p.push_deadline is None and w not in st.contributors:
                    # the warm-up's round waits for w's gradient: SSP may hold w only while some worker that
                    # holds it back is not itself parked waiting for that round (else it is a deadlock)
                    holders = [o for o in core.live if core.clocks[o] < core.clocks[w] - p.ssp_slack]
                    held_by_ssp = not all(st.parked.get(o, -1) >= st.version for o in holders)
                self._check(
                    held_by_ssp or (want >= st.version and not self.immediate(st.version)),
                    f"s{s} keeps w{w}'s pull for block {j} > v{want} parked at v{st.version}",
                )

    def _final_checks(self) -> None:
        for w, core in enumerate(self.workers):
            stop = self.stops.get(w)
            expected = min(self.targets[w], stop.after) if stop is not None else self.targets[w]
            if w in self.told_done:  # the run's budget was spent: it stopped where it was
                self._check(core.step <= max(self.targets[w], self.first_step[w]), f"w{w} went on after 'done'")
            elif w in self.restarted:  # it resumed from a clock the servers gave, and went on to its target
                self._check(core.step >= self.targets[w], f"w{w} stopped at {core.step} of {self.targets[w]} steps")
            else:
                self._check(core.step == expected, f"w{w} completed {core.step} steps, expected {expected}")
        for s, core in enumerate(self.servers):
            if self.budget is not None:
                self._check(core.ended or core.steps_done() < self.budget, f"s{s} counted the budget, never ended")
        self._check(not any(self.channels.values()), "messages left in flight")
        per_block = Counter(u.action.block for u in self.updates)
        for j, v in enumerate(self.version):
            self._check(per_block[j] == v, f"block {j}: {per_block[j]} updates for version {v}")


@dataclass
class Scenario:
    """Everything a property test draws: the policy, the cluster, the stops and the event-order seed."""

    policy: SyncPolicy
    num_servers: int
    steps: int
    seed: int
    split_steps: bool = True
    stops: dict[int, Stop] = field(default_factory=dict)

    def run(self, hooks: Hooks | None = None) -> Harness:
        owners = block_owners(self.policy.num_blocks, self.num_servers)
        return Harness(
            self.policy, owners, self.steps, seed=self.seed, split_steps=self.split_steps, stops=self.stops, hooks=hooks
        ).run()
