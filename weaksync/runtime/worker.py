"""Worker side of the protocol: a session the training loop calls at the two points where weaksync acts.

`wait()` installs replies until the pull quorum (b of B blocks fresh) is met; the loop then computes on the
local θ (fresh and stale blocks mixed) with its own forward, loss and backward; `push()` sends every
block's gradient and requests newer blocks. The built-in job (`run_worker`) is one such loop.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zmq
from torch import nn
from torch.distributed import Store
from torch.utils.data import Dataset, Subset
from zmq.utils.monitor import recv_monitor_message

from ..config import Config
from ..core.actions import Pulls
from ..core.layout import MessageCutter
from ..core.worker import StepPlan, WorkerCore
from ..records.eventlog import EventLog, log_new_choices
from ..records.files import write_json
from ..stragglers.delays import delayer_for
from ..training.data import BatchStream, shard_indices
from ..training.workload import seed_model_init
from ..transport.messages import (
    BadMessage,
    Blocks,
    Bye,
    Done,
    Heartbeat,
    Hello,
    Payloads,
    Pull,
    Push,
    Refuse,
    Welcome,
    decode,
    encode,
)
from ..transport.security import RoleKeys
from ..transport.sockets import connect_dealer
from .flat import FlatModel, model_layout
from .outbox import Outbox
from .resources import memory_figures
from .spec import RoleError, RoleSpec, connect_store, install_stop_handlers, store_set_json, watch_parent


class RegistrationError(RoleError):
    """A server refused this worker (layout mismatch, bad id) or never answered."""


@dataclass
class Traffic:
    push_msgs: int = 0
    push_bytes: int = 0
    pull_msgs: int = 0
    reply_msgs: int = 0
    reply_bytes: int = 0
    installed: int = 0
    bad: dict[str, int] = field(default_factory=dict)


@dataclass
class LinkStats:
    """This worker's side of its link to one server: bytes each way and pull round trips (one per reply
    message: its blocks left in one pull and came back together)."""

    push_bytes: int = 0
    reply_bytes: int = 0
    rtt: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        rtt = np.asarray(self.rtt) if self.rtt else np.zeros(1)
        return {
            "push_bytes": self.push_bytes,
            "reply_bytes": self.reply_bytes,
            "replies": len(self.rtt),
            "rtt_p50": float(np.percentile(rtt, 50)),
            "rtt_p95": float(np.percentile(rtt, 95)),
        }


class WorkerSession:
    """One worker's connection to every server: its protocol core, sockets, heartbeat and figures.

    Install order is the core's: blocks are installed only inside `wait()`, never while the loop computes,
    so a forward and its backward always see one θ."""

    def __init__(self, spec: RoleSpec, model: nn.Module):
        cfg = spec.config
        self.spec = spec
        self.id = spec.rank
        self.model = model
        self.layout = model_layout(self.model, cfg.cluster.servers, cfg.cluster.blocks)
        self.flat = FlatModel(self.model, self.layout)
        coalesce = cfg.cluster.coalesce
        self.push_cut = MessageCutter(self.layout.owners, coalesce, self.layout.block_bytes)
        self.pull_cut = MessageCutter(self.layout.owners, coalesce)
        self.core = WorkerCore(self.id, cfg.policy(self.layout.num_blocks))
        self.log = EventLog(spec.path / "events" / f"{spec.name}.jsonl")
        self.traffic = Traffic()
        self.identity = f"w{self.id}".encode()
        self.ctx: zmq.Context | None = None
        self.socks: list[zmq.Socket] = []
        self.monitors: list[zmq.Socket] = []  # per server: its data socket's disconnections
        self.lost: dict[int, float] = {}  # server -> when its connection dropped, until it welcomes this worker again
        self.server_blocks = [[b.index for b in self.layout.blocks_of(s)] for s in range(cfg.cluster.servers)]
        self.poller = zmq.Poller()
        self.step_times: list[float] = []
        self.recent_stale: deque[int] = deque(maxlen=20)
        rules, seed, servers = cfg.all_stragglers(), cfg.run.seed, cfg.cluster.servers
        self.compute_delay = delayer_for(rules, "worker", self.id, seed)
        self.link_delays = [delayer_for(rules, "link", self.id, seed, peer=s) for s in range(servers)]
        self.outbox = Outbox()
        self.done = False  # a server said the run's steps are done
        self.injected_total = 0.0
        self.logged_choices = 0
        self.first_step: float | None = None  # the clock of time-windowed straggler rules starts here
        self.links = [LinkStats() for _ in range(servers)]
        self.pull_sent: dict[int, float] = {}  # block -> when its outstanding pull left
        self.kv: Store | None = None  # set once connected; progress goes there for live display
        self.cap = cfg.train.steps * cfg.cluster.workers  # the whole budget: a safety net, servers say "done" first
        self.plan: StepPlan | None = None  # the step between wait() and push()
        self.waited = 0.0
        self.wait_from = 0.0
        self.step_began = 0.0
        self.last_progress = 0.0
        self.beat_stop = threading.Event()
        self.beat: threading.Thread | None = None
        self.status = "done"  # what close() reports unless told otherwise (a loop may also stop early)
        self.closed = False

    # -- connection ----------------------------------------------------------------------------------

    def open(self) -> WorkerSession:
        """Meet the run through its store, register with every server, start the heartbeat, pull θ₀."""
        cfg = self.spec.config
        self.kv = connect_store(self.spec)
        endpoints = [self.kv.get(f"server/{s}").decode() for s in range(cfg.cluster.servers)]
        self.ctx = zmq.Context()
        self.connect(self.ctx, endpoints)
        self.beat = threading.Thread(
            target=heartbeat,
            args=(self.ctx, endpoints, self.id, cfg.timeouts.heartbeat_interval, self.beat_stop, self.spec.keys),
            name="heartbeat",
            daemon=True,
        )
        self.beat.start()
        self.log.write("start", w=self.id, pid=os.getpid(), blocks=self.layout.num_blocks, digest=self.layout.digest)
        self.log.flush()
        self.send_pulls(self.core.start(time.monotonic()))
        self.wait_from = time.monotonic()
        return self

    def watch(self, sock: zmq.Socket) -> zmq.Socket:
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.poller.register(monitor, zmq.POLLIN)
        return monitor

    def check_links(self) -> None:
        """A server whose connection dropped (killed, restarted from its checkpoint): reconnect to it."""
        for s, monitor in enumerate(self.monitors):
            dropped = False
            while monitor.poll(0):
                recv_monitor_message(monitor)
                dropped = True
            if dropped:
                self.reconnect(s)

    def reconnect(self, server: int) -> None:
        """A new socket to `server` (what the old one still queued, pushes and pulls for a process that is
        gone, goes with it) and a new hello; the server's welcome then rebases this worker's copies of its
        blocks (`on_welcome`). The endpoint is read again: the restarted server advertises where it is."""
        old, monitor = self.socks[server], self.monitors[server]
        for sock in (old, monitor):
            self.poller.unregister(sock)
        old.disable_monitor()
        monitor.close(linger=0)
        old.close(linger=0)
        assert self.kv is not None and self.ctx is not None
        endpoint = self.kv.get(f"server/{server}").decode()
        sock = connect_dealer(self.ctx, endpoint, self.identity, self.spec.keys)
        sock.send_multipart(encode(Hello(worker=self.id, digest=self.layout.digest, pid=os.getpid())))
        self.socks[server] = sock
        self.poller.register(sock, zmq.POLLIN)
        self.monitors[server] = self.watch(sock)
        self.lost.setdefault(server, time.monotonic())
        self.log.write("server-lost", w=self.id, s=server, step=self.core.step)

    def on_welcome(self, msg: Welcome) -> None:
        """A server this worker reconnected to registered it again: pull its blocks whatever their version
        (a restored server's versions may be below this worker's copies)."""
        since = self.lost.pop(msg.server, None)
        if since is None or not 0 <= msg.server < len(self.server_blocks):
            self.count_bad("unexpected 'welcome'")
            return
        self.send_pulls(self.core.rebase(self.server_blocks[msg.server]))
        self.log.write("server-back", w=self.id, s=msg.server, after=time.monotonic() - since, step=self.core.step)

    def connect(self, ctx: zmq.Context, endpoints: list[str]) -> None:
        """Register with every server. Each socket is watched from before its hello: a server lost from then
        on (even while this worker registers, or before its first pulls reach it) is reconnected."""
        self.socks = [connect_dealer(ctx, ep, self.identity, self.spec.keys) for ep in endpoints]
        for sock in self.socks:
            self.monitors.append(self.watch(sock))
            self.poller.register(sock, zmq.POLLIN)
            sock.send_multipart(encode(Hello(worker=self.id, digest=self.layout.digest, pid=os.getpid())))
        pending = set(range(len(self.socks)))
        clock = 0
        left_total = self.spec.config.timeouts.connect
        deadline = time.monotonic() + left_total
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RegistrationError(
                    f"servers {sorted(pending)} did not answer registration within {left_total:.0f}s "
                    "(timeouts.connect): check that they run and are reachable"
                )
            self.check_links()
            for s in list(pending):
                if self.socks[s].poll(int(min(left, 0.1) * 1000)):
                    msg = decode(self.socks[s].recv_multipart())
                    if isinstance(msg, Refuse):
                        raise RegistrationError(f"server {s} refused worker {self.id}: {msg.reason}")
                    if isinstance(msg, Welcome):
                        pending.discard(s)
                        self.lost.pop(s, None)  # nothing to rebase: nothing was pulled yet
                        clock = max(clock, msg.clock)
        if clock:
            self.core.resume_at(clock)  # a resumed run: the step count (and the data position) goes on

    # -- the two calls of a training step -------------------------------------------------------------

    def wait(self) -> bool:
        """Block until the pull quorum is met and its blocks are installed in the model; False once the run's
        steps are done (leave the loop then). Gradients left in the model are cleared for the next step."""
        if self.plan is not None:
            raise RoleError("wait() called twice without push() between: call push() after each step's backward")
        cfg = self.spec.config
        while True:
            if self.done or self.core.step >= self.cap:
                self.finish_sends()
                return False
            self.outbox.flush(time.monotonic())
            self.drain()
            self.check_links()
            now = time.monotonic()
            if self.core.ready(now):
                break
            if now - self.wait_from > cfg.timeouts.progress:
                raise RoleError(
                    f"worker {self.id} got no fresh block for {cfg.timeouts.progress:.0f}s "
                    f"(timeouts.progress) at step {self.core.step}: a server is stuck or unreachable"
                )
            due = [t for t in (self.core.deadline(), self.outbox.next_due()) if t is not None]
            timeout = max(0.0, min([0.5, *(t - now for t in due)]))
            self.poller.poll(int(timeout * 1000) + 1)
        self.waited = now - self.wait_from
        if self.first_step is None:
            self.first_step = time.monotonic()
        self.step_began = time.time()
        self.plan = self.core.begin_step(time.monotonic())
        self.flat.zero_grad()
        return True

    def push(self, loss: torch.Tensor | float | None = None) -> None:
        """Send this step's gradients (the model's `.grad`, after any clipping the loop did) for every block,
        and request newer blocks. `loss` is only logged."""
        plan = self.plan
        if plan is None:
            raise RoleError("push() called without wait(): call wait() before each step's forward pass")
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else None if loss is None else float(loss)
        if value is not None and not math.isfinite(value):
            raise RoleError(
                f"training diverged: loss is {value} on worker {self.id} at step {plan.step}: "
                "lower optim.lr or add optim.warmup_steps"
            )
        t0 = self.step_began
        vector = self.flat.push_vector()
        injected = (
            self.compute_delay.sample(plan.step, measured=time.time() - t0, elapsed=self.elapsed())
            if self.compute_delay.active
            else 0.0
        )
        if injected > 0:
            self.injected_total += injected
            time.sleep(injected)  # a synthetic straggler: compute took this much longer
        t1 = time.time()
        pushes, pulls = self.core.end_step(time.monotonic())
        self.plan = None
        if len(self.core.choices) > self.logged_choices:
            self.logged_choices = log_new_choices(self.log, self.core.choices, self.logged_choices, w=self.id)
        layout = self.layout
        push_bytes, messages = 0, self.push_cut.cut(pushes.blocks)
        for cut in messages:  # the cut knows each message's blocks and bytes
            grads = self.flat.gather(vector, [layout.blocks[j] for j in cut.blocks])
            push = Push(self.id, plan.step, cut.blocks, cut.pick(pushes.bases), grads, sent_at=time.time())
            self.send(cut.server, encode(push), cut.nbytes, plan.step)
            push_bytes += cut.nbytes
            self.links[cut.server].push_bytes += cut.nbytes
        pull_msgs = self.send_pulls(pulls)
        self.traffic.push_msgs += len(messages)
        self.traffic.push_bytes += push_bytes
        self.step_times.append(t1 - t0)
        self.recent_stale.append(len(plan.stale))
        self.log.write(
            "step",
            w=self.id,
            step=plan.step,
            t=t0,
            t_end=t1,
            t_push=time.time(),
            injected=injected,
            wait=self.waited,
            loss=value,
            fresh=len(plan.fresh),
            b=self.core.b,
            stale=sorted(plan.stale),
            versions=list(plan.versions),
            push_bytes=push_bytes,
            push_msgs=len(messages),
            pull_msgs=pull_msgs,
        )
        self.wait_from = time.monotonic()
        if self.wait_from - self.last_progress > 1.0:
            self.publish_progress()
            self.last_progress = self.wait_from

    def finish_sends(self) -> None:
        """Deliver pushes an injected link delay still holds back."""
        while (due := self.outbox.next_due()) is not None:
            time.sleep(max(0.0, due - time.monotonic()))
            self.outbox.flush(time.monotonic())

    @property
    def step(self) -> int:
        """Steps this worker has pushed."""
        return self.core.step

    @property
    def rank(self) -> int:
        """This worker's id, 0 .. num_workers - 1 (for a DistributedSampler's `rank`)."""
        return self.id

    @property
    def num_workers(self) -> int:
        return self.spec.config.cluster.workers

    @property
    def config(self) -> Config:
        """The run's configuration (batch size, steps, seed, ...)."""
        return self.spec.config

    def shard(self, dataset: Dataset) -> Subset:
        """This worker's disjoint share of `dataset`, the same split as the built-in jobs use."""
        cfg = self.spec.config
        return Subset(dataset, shard_indices(len(dataset), cfg.cluster.workers, self.id, cfg.run.seed))

    def elapsed(self) -> float:
        return 0.0 if self.first_step is None else time.monotonic() - self.first_step

    def send(self, server: int, frames: list, nbytes: int, step: int) -> None:
        """Send now, or through the outbox when an injected link delay applies to this server's link."""
        link = self.link_delays[server]
        if link.active:
            delay = link.sample(step, nbytes=nbytes, elapsed=self.elapsed())
            self.outbox.put(time.monotonic() + delay, server, self.socks[server], frames)
        else:
            self.socks[server].send_multipart(frames, copy=False)

    def send_pulls(self, pulls: Pulls) -> int:
        """Ask for newer blocks, one message per server (or per block without coalescing); returns how many."""
        now = time.monotonic()
        messages = self.pull_cut.messages(pulls)
        for server, items in messages:
            for j in items.blocks:
                self.pull_sent[j] = now
            self.send(server, encode(Pull(self.id, items.clock, items.blocks, items.wants)), 0, self.core.step)
        self.traffic.pull_msgs += len(messages)
        return len(messages)

    def drain(self) -> None:
        """Install every reply that has arrived (only those newer than the local copy)."""
        for sock in self.socks:
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.on_message(frames)

    def on_message(self, frames: list) -> None:
        try:
            msg = decode(frames)
        except BadMessage as exc:
            self.count_bad(str(exc))
            return
        if isinstance(msg, Done):
            self.done = True
            return
        if isinstance(msg, Welcome):
            self.on_welcome(msg)
            return
        if not isinstance(msg, Blocks):
            self.count_bad(f"unexpected '{msg.KIND}'")
            return
        self.traffic.reply_msgs += 1
        now = time.monotonic()
        layout = self.layout
        specs, owners, count = layout.blocks, layout.owners, len(layout.blocks)
        blocks, versions, values = msg.blocks, msg.versions, msg.values
        sizes = values.sizes if isinstance(values, Payloads) else [v.numel() for v in values]
        fits = [0 <= j < count and n == specs[j].stop - specs[j].start for j, n in zip(blocks, sizes)]
        if not all(fits):
            for j, v, fit in zip(blocks, values, fits):
                if not fit:
                    self.count_bad(f"block {j} with {v.numel()} values does not fit the layout")
            kept = [i for i, fit in enumerate(fits) if fit]
            blocks, versions, values = [blocks[i] for i in kept], [versions[i] for i in kept], [values[i] for i in kept]
            sizes = [sizes[i] for i in kept]
        if not blocks:
            return
        sent = None
        self.traffic.reply_bytes += 4 * sum(sizes)  # float32 on the wire
        for j, n in zip(blocks, sizes):
            self.links[owners[j]].reply_bytes += 4 * n
            sent = self.pull_sent.pop(j, sent)
        if sent is not None:  # one round trip per reply: its blocks left in one pull and came back together
            self.links[owners[blocks[0]]].rtt.append(now - sent)
        fresh = self.core.on_blocks(blocks, versions, now)
        whole = len(fresh) == len(msg.blocks)  # then the frame as received: one indexed copy (`install_all`)
        self.flat.install_all([specs[blocks[i]] for i in fresh], values if whole else [values[i] for i in fresh])
        self.traffic.installed += len(fresh)

    def count_bad(self, reason: str) -> None:
        self.traffic.bad[reason] = self.traffic.bad.get(reason, 0) + 1
        self.log.write("reject", w=self.id, reason=reason)

    def publish_progress(self) -> None:
        if self.kv is not None:
            recent = self.step_times[-20:]
            store_set_json(
                self.kv,
                f"progress/worker/{self.id}",
                {
                    "step": self.core.step,
                    "t": time.time(),
                    "compute": float(np.mean(recent)) if recent else None,
                    "stale_blocks": float(np.mean(self.recent_stale)) if self.recent_stale else 0.0,
                    "b": self.core.b,
                },
            )

    def summary(self) -> dict:
        times = np.array(self.step_times) if self.step_times else np.zeros(1)
        return {
            "role": "worker",
            "id": self.id,
            "pid": os.getpid(),
            "steps": self.core.step,
            "compute_p50": float(np.percentile(times, 50)),
            "compute_p95": float(np.percentile(times, 95)),
            "push_msgs": self.traffic.push_msgs,
            "push_bytes": self.traffic.push_bytes,
            "pull_msgs": self.traffic.pull_msgs,
            "reply_msgs": self.traffic.reply_msgs,
            "reply_bytes": self.traffic.reply_bytes,
            "installed": self.traffic.installed,
            "gradients_computed": self.core.step * self.layout.num_blocks,
            "ignored_replies": self.core.ignored_replies,
            "b": self.core.b,
            "bad_messages": self.traffic.bad,
            **memory_figures(),
            "links": {str(s): link.summary() for s, link in enumerate(self.links)},
            "injected_seconds": float(self.injected_total),
        }

    def close(self, status: str | None = None) -> None:
        """Say goodbye to the servers, write this worker's figures and tell the run it is done."""
        if self.closed:
            return
        self.closed = True
        if status is not None:
            self.status = status
        self.beat_stop.set()
        self.publish_progress()
        for sock in self.socks:
            try:
                sock.send_multipart(encode(Bye(self.id)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.log.write("end", w=self.id, status=self.status, steps=self.core.step)
        self.log.close()
        write_json(self.spec.path / "procs" / f"{self.spec.name}.json", {**self.summary(), "status": self.status})
        try:
            if self.kv is not None:
                self.kv.set(f"done/worker/{self.id}", self.status)
        except Exception:  # the store may be gone when the whole run is being torn down
            pass
        if self.beat is not None and self.beat.is_alive():
            self.beat.join(timeout=2)
        for sock in self.socks:
            sock.disable_monitor()
            sock.close(linger=200)  # give 'bye' a moment to leave
        for monitor in self.monitors:
            monitor.close(linger=0)
        if self.ctx is not None:
            self.ctx.term()


def heartbeat(
    ctx: zmq.Context,
    endpoints: list[str],
    worker: int,
    interval: float,
    stop: threading.Event,
    keys: RoleKeys | None = None,
) -> None:
    """Tell servers this worker is alive while its main thread is busy in a long step."""
    socks = [connect_dealer(ctx, ep, f"w{worker}.hb".encode(), keys) for ep in endpoints]
    try:
        while not stop.wait(interval):
            for sock in socks:
                sock.send_multipart(encode(Heartbeat(worker)))
    finally:
        for sock in socks:
            sock.close(linger=0)


def open_session(spec: RoleSpec, model: nn.Module) -> WorkerSession:
    """This process as a worker: stop handlers, the launcher watch, torch threads, then the open session.
    An uncaught exception marks the session failed, so that its closing (at exit) says so."""
    install_stop_handlers()  # glibc's adaptive allocator stays: see return_large_frees_to_os
    watch_parent(spec.watch_pid)
    torch.set_num_threads(spec.config.train.threads)
    session = WorkerSession(spec, model)
    previous_hook = sys.excepthook

    def mark_failed(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        session.status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        previous_hook(kind, exc, tb)

    sys.excepthook = mark_failed
    try:
        return session.open()
    except BaseException:  # refused, unreachable, interrupted: its figures and 'done' still reach the run
        session.close("interrupted" if sys.exc_info()[0] is KeyboardInterrupt else "failed")
        raise


def serve_worker(spec: RoleSpec, model: nn.Module, loop: Callable[[WorkerSession], None]) -> None:
    """Run `loop` on an open session, and close the session however the loop ends."""
    session = open_session(spec, model)
    status = "failed"
    try:
        loop(session)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        session.close(status)


def run_worker(spec: RoleSpec) -> None:
    """Entry point of a built-in worker process: the workload's model, data and loss in the plain loop."""
    cfg = spec.config
    seed_model_init(cfg.run.seed)
    model = spec.workload.model_fn()
    train, _ = spec.workload.data_fn()
    shard = shard_indices(len(train), cfg.cluster.workers, spec.rank, cfg.run.seed)
    batches = BatchStream(train, shard, cfg.train.batch_size, seed=cfg.run.seed * 7919 + spec.rank)
    loss_fn = spec.workload.loss_fn

    def loop(ps: WorkerSession) -> None:
        model.train()
        for _ in range(ps.step):  # a resumed run: the data position goes on where this worker was
            next(batches)
        while ps.wait():
            x, y = next(batches)
            loss = loss_fn(model(x), y)
            loss.backward()
            ps.push(loss.detach())

    serve_worker(spec, model, loop)
