"""A discrete-event simulation of one run: the protocol core's own `ServerCore` and `WorkerCore` objects (and
with them `auto`'s tuners) driven by a simulated clock instead of sockets, with no tensors.

Everything the runtime does between the cores is modelled here and nothing the cores decide: a worker computes
for a drawn time, its pushes and pulls cross NICs and links (timing.py), each server's core takes them in
arrival order and answers with the sends it decides; a step begins when the worker core says it is ready, and
the run ends when a server core spends the step budget. The straggler rules of the run's config (worker,
server and link delays) apply as in a real run. Messages are cut as the runtime cuts them (`cluster.coalesce`,
core.layout.MessageCutter): coalesced, a worker's pushes to one server in one step travel as one message,
and so do its pulls and a server's replies to one worker released by one message; the rules stay per block
(the cores see the same calls), only the message count changes.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import time as wallclock
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import Config
from ..core import actions as act
from ..core.layout import MessageCutter
from ..core.server import ServerCore
from ..core.worker import WorkerCore
from ..report.summary import percentiles
from ..stragglers.delays import Delayer, StragglerRule, delayer_for
from .timing import ComputeClock, SendClock, TimeModel

PULL_BYTES = 16  # a pull's payload: block, want, clock


@dataclass
class _Host:
    """One machine's NIC (each direction) and message CPU: the time each is free again."""

    nic_out: float = 0.0
    nic_in: float = 0.0
    cpu: float = 0.0
    msgs_in: int = 0
    bytes_in: int = 0
    msgs_out: int = 0
    bytes_out: int = 0


@dataclass
class _WorkerStats:
    begins: list[float] = field(default_factory=list)
    computes: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    fresh: int = 0
    stale: int = 0
    wait_from: float = 0.0


class Simulation:
    """One simulated run of `config` (mode, N, S, steps, stragglers) on blocks of `block_bytes`, block j held by
    server `block_server[j]`."""

    def __init__(
        self,
        config: Config,
        model: TimeModel,
        block_bytes: Sequence[int],
        block_server: Sequence[int],
        coalesce: bool | None = None,
        seed: int = 0,
    ):
        c = config.cluster
        self.config, self.model = config, model
        self.coalesce = c.coalesce if coalesce is None else coalesce  # None: as the config's real run would
        self.n, self.s = c.workers, c.servers
        self.block_bytes = list(block_bytes)
        self.block_server = list(block_server)
        self.data_cut = MessageCutter(self.block_server, self.coalesce, self.block_bytes)  # pushes and replies
        self.pull_cut = MessageCutter(self.block_server, self.coalesce)
        self.policy = config.policy(len(self.block_bytes))
        budget = self.n * config.train.steps
        self.servers = [
            ServerCore(self.policy, [j for j, srv in enumerate(block_server) if srv == s], budget)
            for s in range(self.s)
        ]
        self.workers = [WorkerCore(w, self.policy) for w in range(self.n)]
        self.worker_hosts = [_Host() for _ in range(self.n)]
        self.server_hosts = [_Host() for _ in range(self.s)]
        rules = config.all_stragglers()
        self.compute_delay = _delayers(rules, "worker", range(self.n), seed)
        self.reply_delay = _delayers(rules, "server", range(self.s), seed + 1)  # seeds as the runtime's
        self.link_delay = [_delayers(rules, "link", range(self.s), seed, worker=w) for w in range(self.n)]
        self.clocks = [ComputeClock(model, w, seed) for w in range(self.n)]
        self.send_clocks = [SendClock(model, w, seed) for w in range(self.n)]
        self.stats = [_WorkerStats() for _ in range(self.n)]
        self.computing = [False] * self.n
        self.timer_at: list[float | None] = [None] * self.n
        self.server_timer_at: list[float | None] = [None] * self.s
        self.events: list[tuple[float, int, Callable[..., None], tuple]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.first_step: float | None = None
        self.ended_at: float | None = None
        self.messages: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.accepted = 0
        self.updates = 0
        self.update_times: list[float] = []  # when each update was applied (any block)
        self.processed = 0

    # -- the event loop --------------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn, args))

    def run(self, max_seconds: float | None = None) -> dict[str, Any]:
        """Simulate until a server ends the run on its budget (or `max_seconds` of simulated time); the summary."""
        started = wallclock.perf_counter()
        collecting = gc.isenabled()
        gc.disable()  # the loop makes millions of short-lived objects that hold no cycles; the collector's passes
        try:  # over a thousand workers' state took 37 % of a 5-step N = 1,000 run (timed with it on and off)
            for w in range(self.n):
                self.send_pulls(w, self.workers[w].start(0.0))
            while self.events and self.ended_at is None:
                t, _, fn, args = heapq.heappop(self.events)
                if max_seconds is not None and t > max_seconds:
                    break
                self.now = t
                fn(*args)
                self.processed += 1
        finally:
            if collecting:
                gc.enable()
        return self.summary(wallclock.perf_counter() - started)

    # -- messages --------------------------------------------------------------------------------------

    def transmit(
        self, src: _Host, dst: _Host, nbytes: int, deliver: Callable[..., None], args: tuple, delay: float
    ) -> None:
        """Out of `src`'s NIC (after an injected `delay`), across the link, into `dst`'s NIC and CPU."""
        m = self.model
        nbytes += m.header_bytes
        start = max(self.now + delay, src.nic_out)
        src.nic_out = start + nbytes / m.bandwidth
        src.msgs_out += 1
        src.bytes_out += nbytes
        self.at(src.nic_out + m.latency, self.arrive, dst, nbytes, deliver, args)

    def arrive(self, dst: _Host, nbytes: int, deliver: Callable[..., None], args: tuple) -> None:
        """The message reaches its receiver: behind what entered its NIC and its CPU before it. On a machine
        shared by every process (`shared_cores`), its CPU cost stretches by the processes that want a core
        then (the workers computing or sending, and the receiver) over the cores: processor sharing, taken at
        the message's arrival."""
        m = self.model
        dst.nic_in = max(self.now, dst.nic_in) + nbytes / m.bandwidth
        stretch = 1.0
        if m.shared_cores:
            stretch = max(1.0, (sum(self.computing) + 1) / m.shared_cores)  # the receiver and the busy workers
        dst.cpu = max(dst.nic_in, dst.cpu) + (m.message_cpu + nbytes * m.byte_cpu) * stretch
        dst.msgs_in += 1
        dst.bytes_in += nbytes
        self.at(dst.cpu, deliver, *args)

    def link_wait(self, w: int, s: int, nbytes: int) -> float:
        link = self.link_delay[w][s]
        return link.sample(self.workers[w].step, nbytes=nbytes, elapsed=self.elapsed()) if link.active else 0.0

    def send_pulls(self, w: int, pulls: act.Pulls) -> None:
        for s, part in self.pull_cut.messages(pulls):
            self.messages["pull"] += 1
            nbytes = PULL_BYTES * len(part)
            self.transmit(self.worker_hosts[w], self.server_hosts[s], nbytes, self.on_pulls, (s, w, part), 0.0)

    def send_pushes(self, w: int, pushes: act.Pushes) -> None:
        for cut in self.data_cut.cut(pushes.blocks):
            s, nbytes, part = cut.server, cut.nbytes, pushes.part(cut)
            self.messages["push"] += 1
            self.bytes["push"] += nbytes
            delay = self.link_wait(w, s, nbytes)
            self.transmit(self.worker_hosts[w], self.server_hosts[s], nbytes, self.on_pushes, (s, w, part), delay)

    def send_replies(self, s: int, sends: Sequence[act.Send]) -> None:
        per_worker: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for send in sends:  # usually one Send per worker: a group of blocks at one version
            blocks, versions = per_worker.get(send.worker, ((), ()))
            per_worker[send.worker] = blocks + send.blocks, versions + (send.version,) * len(send.blocks)
        server_wait = self.reply_delay[s]
        for w, (blocks, versions) in per_worker.items():
            for cut in self.data_cut.cut(blocks):
                nbytes, part_versions = cut.nbytes, cut.pick(versions)
                delay = server_wait.sample(part_versions[0], elapsed=self.elapsed()) if server_wait.active else 0.0
                delay += self.link_wait(w, s, nbytes)
                self.messages["reply"] += 1
                self.bytes["reply"] += nbytes
                args = (w, cut.blocks, part_versions)
                self.transmit(self.server_hosts[s], self.worker_hosts[w], nbytes, self.on_replies, args, delay)

    # -- servers ---------------------------------------------------------------------------------------

    def on_pushes(self, s: int, w: int, pushes: act.Pushes) -> None:
        """One push message (of one step), to the core whole, as the runtime hands it."""
        self.perform(s, self.servers[s].on_push_many(w, pushes.blocks, pushes.bases, pushes.step, self.now))

    def on_pulls(self, s: int, w: int, pulls: act.Pulls) -> None:
        self.perform(s, self.servers[s].on_pull_many(w, pulls.blocks, pulls.wants, pulls.clock, self.now))

    def server_timer(self, s: int) -> None:
        if self.server_timer_at[s] is None or self.server_timer_at[s] > self.now:
            return  # a later deadline replaced this one
        self.server_timer_at[s] = None
        self.perform(s, self.servers[s].on_timer(self.now))

    def perform(self, s: int, actions: list[Any]) -> None:
        sends = []
        for a in actions:
            if isinstance(a, act.Send):
                sends.append(a)
            elif isinstance(a, act.Accept):
                self.accepted += len(a.blocks)
            elif isinstance(a, act.Apply):
                self.updates += len(a.blocks)
                self.update_times += [self.now] * len(a.blocks)
            elif isinstance(a, act.Drop):
                self.drops[a.reason] += len(a.blocks)
            elif isinstance(a, act.EndRun):
                self.ended_at = self.now
        if sends:
            self.send_replies(s, sends)
        due = self.servers[s].next_deadline()
        if due is not None and (self.server_timer_at[s] is None or due < self.server_timer_at[s]):
            self.server_timer_at[s] = due
            self.at(due, self.server_timer, s)

    # -- workers ---------------------------------------------------------------------------------------

    def on_replies(self, w: int, blocks: tuple[int, ...], versions: tuple[int, ...]) -> None:
        self.workers[w].on_blocks(blocks, versions, self.now)
        self.try_step(w)

    def worker_timer(self, w: int) -> None:
        if self.timer_at[w] is None or self.timer_at[w] > self.now:
            return
        self.timer_at[w] = None
        self.try_step(w)

    def try_step(self, w: int) -> None:
        core = self.workers[w]
        if self.computing[w]:
            return
        if not core.ready(self.now):
            due = core.deadline()
            if due is not None and due > self.now and (self.timer_at[w] is None or due < self.timer_at[w]):
                self.timer_at[w] = due
                self.at(due, self.worker_timer, w)
            return
        plan = core.begin_step(self.now)
        if self.first_step is None:
            self.first_step = self.now
        st = self.stats[w]
        st.begins.append(self.now)
        st.waits.append(self.now - st.wait_from)
        st.fresh += len(plan.fresh)
        st.stale += len(plan.versions) - len(plan.fresh)
        took = self.clocks[w].draw()
        delay = self.compute_delay[w]
        if delay.active:
            took += delay.sample(plan.step, measured=took, elapsed=self.elapsed())
        st.computes.append(took)
        self.computing[w] = True
        self.at(self.now + took, self.step_done, w)

    def step_done(self, w: int) -> None:
        """Compute is over: the core's step ends, and the messages leave once the worker has sent them."""
        pushes, pulls = self.workers[w].end_step(self.now)
        sending = self.send_clocks[w].draw()
        if sending > 0:
            self.at(self.now + sending, self.sent, w, pushes, pulls)
        else:
            self.sent(w, pushes, pulls)

    def sent(self, w: int, pushes: act.Pushes, pulls: act.Pulls) -> None:
        self.computing[w] = False
        self.stats[w].wait_from = self.now
        self.send_pushes(w, pushes)
        self.send_pulls(w, pulls)
        self.try_step(w)

    def elapsed(self) -> float:
        return 0.0 if self.first_step is None else self.now - self.first_step

    # -- figures ---------------------------------------------------------------------------------------

    def summary(self, wall: float) -> dict[str, Any]:
        """The fields of a real run's summary.json that a simulation can have, plus what it simulated."""
        steps = sum(len(st.begins) for st in self.stats)
        start = self.first_step or 0.0
        span = (self.ended_at if self.ended_at is not None else self.now) - start
        intervals = [d for st in self.stats for d in np.diff(st.begins)]
        waits = [x for st in self.stats for x in st.waits[1:]]
        msgs = sum(self.messages.values())
        per_second = max(span, 1e-12)
        return {
            "simulated": True,
            "mode": self.config.sync.mode,
            "num_workers": self.n,
            "num_servers": self.s,
            "num_blocks": len(self.block_bytes),
            "k": self.policy.k,
            "b": self.policy.b,
            "coalesce": self.coalesce,
            "steps": steps,
            "train_seconds": span,
            "steps_per_s": steps / per_second,
            "step_time": percentiles(intervals),
            "wait_time": percentiles(waits),
            "compute_time": percentiles([x for st in self.stats for x in st.computes]),
            "updates": self.updates,
            "contributions": {
                "accepted": self.accepted,
                "dropped": sum(self.drops.values()),
                "drops_by_reason": dict(self.drops),
            },
            "blocks_per_step": {
                "fresh_mean": sum(st.fresh for st in self.stats) / steps if steps else None,
                "stale_mean": sum(st.stale for st in self.stats) / steps if steps else None,
            },
            "traffic": {
                "push_msgs": self.messages["push"],
                "pull_msgs": self.messages["pull"],
                "reply_msgs": self.messages["reply"],
                "push_bytes": self.bytes["push"],
                "reply_bytes": self.bytes["reply"],
                "msgs_per_step": msgs / steps if steps else None,
                "bytes_per_step": (self.bytes["push"] + self.bytes["reply"]) / steps if steps else None,
            },
            "servers": {
                str(s): {
                    "msgs_in_per_s": h.msgs_in / per_second,
                    "bytes_in_per_s": h.bytes_in / per_second,
                    "msgs_out_per_s": h.msgs_out / per_second,
                    "bytes_out_per_s": h.bytes_out / per_second,
                }
                for s, h in enumerate(self.server_hosts)
            },
            "simulation": {
                "events": self.processed,
                "wall_seconds": wall,
                "model": self.model.model_dump(exclude={"compute_samples", "send_samples"}),
            },
        }


def _delayers(
    rules: Sequence[StragglerRule], target: str, ids: range, seed: int, worker: int | None = None
) -> list[Delayer]:
    """The delayer of each id (of each server's link to `worker`); one idle delayer for all when no rule
    names this target (a thousand workers' links then cost nothing to set up)."""
    if not any(rule.target == target for rule in rules):
        return [Delayer()] * len(ids)
    if worker is not None:
        return [delayer_for(rules, target, worker, seed, peer=i) for i in ids]
    return [delayer_for(rules, target, i, seed) for i in ids]


def even_blocks(model_bytes: int, num_blocks: int, num_servers: int) -> tuple[list[int], list[int]]:
    """B blocks of (nearly) equal size, dealt to servers in turn: the layout of a model of `model_bytes`."""
    base, extra = divmod(model_bytes, num_blocks)
    sizes = [base + (1 if j < extra else 0) for j in range(num_blocks)]
    return sizes, [j % num_servers for j in range(num_blocks)]
