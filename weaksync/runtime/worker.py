"""Worker process: computes gradients on its data shard and talks to every server through a DEALER.

The loop is the worker core's: install replies, wait for the pull quorum, compute one minibatch on the
local θ (fresh and stale blocks mixed), push every block, request newer blocks.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import zmq
from torch.distributed import Store

from ..core.worker import WorkerCore
from ..stragglers.delays import delayer_for
from ..training.data import BatchStream, shard_indices
from ..training.workload import seed_model_init
from ..transport.messages import BadMessage, decode, encode
from ..transport.sockets import connect_dealer
from .eventlog import EventLog, log_new_choices
from .flat import FlatModel, model_layout
from .outbox import Outbox
from .resources import memory_figures, write_json
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
    """This worker's side of its link to one server: bytes each way and pull round trips."""

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


class Worker:
    def __init__(self, spec: RoleSpec):
        cfg = spec.config
        self.spec = spec
        self.id = spec.rank
        seed_model_init(cfg.run.seed)
        self.model = spec.workload.model_fn()
        self.layout = model_layout(self.model, cfg.cluster.servers, cfg.cluster.blocks)
        self.flat = FlatModel(self.model, self.layout)
        self.core = WorkerCore(self.id, cfg.policy(self.layout.num_blocks))
        train, _ = spec.workload.data_fn()
        shard = shard_indices(len(train), cfg.cluster.workers, self.id, cfg.run.seed)
        self.batches = BatchStream(train, shard, cfg.train.batch_size, seed=cfg.run.seed * 7919 + self.id)
        self.log = EventLog(spec.path / "events" / f"{spec.name}.jsonl")
        self.traffic = Traffic()
        self.identity = f"w{self.id}".encode()
        self.socks: list[zmq.Socket] = []
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

    # -- connection ----------------------------------------------------------------------------------

    def connect(self, ctx: zmq.Context, endpoints: list[str]) -> None:
        self.socks = [connect_dealer(ctx, ep, self.identity) for ep in endpoints]
        for sock in self.socks:
            sock.send_multipart(encode("hello", w=self.id, digest=self.layout.digest, pid=os.getpid()))
        pending = set(range(len(self.socks)))
        left_total = self.spec.config.timeouts.connect
        deadline = time.monotonic() + left_total
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RegistrationError(
                    f"servers {sorted(pending)} did not answer registration within {left_total:.0f}s "
                    "(timeouts.connect): check that they run and are reachable"
                )
            for s in list(pending):
                if self.socks[s].poll(int(min(left, 0.1) * 1000)):
                    msg = decode(self.socks[s].recv_multipart())
                    if msg.kind == "refuse":
                        raise RegistrationError(f"server {s} refused worker {self.id}: {msg['reason']}")
                    if msg.kind == "welcome":
                        pending.discard(s)

    # -- main loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.spec.config
        self.send_pulls(self.core.start(time.monotonic()))
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        wait_from = time.monotonic()
        last_progress = 0.0
        cap = cfg.train.steps * cfg.cluster.workers  # the whole budget: a safety net, servers say "done" first
        while not self.done and self.core.step < cap:
            self.outbox.flush(time.monotonic())
            self.drain()
            now = time.monotonic()
            if not self.core.ready(now):
                if now - wait_from > cfg.timeouts.progress:
                    raise RoleError(
                        f"worker {self.id} got no fresh block for {cfg.timeouts.progress:.0f}s "
                        f"(timeouts.progress) at step {self.core.step}: a server is stuck or unreachable"
                    )
                due = [t for t in (self.core.deadline(), self.outbox.next_due()) if t is not None]
                timeout = max(0.0, min([0.5, *(t - now for t in due)]))
                poller.poll(int(timeout * 1000) + 1)
                continue
            waited = now - wait_from
            self.step(waited)
            wait_from = time.monotonic()
            if wait_from - last_progress > 1.0:
                self.publish_progress()
                last_progress = wait_from
        while (due := self.outbox.next_due()) is not None:  # delayed pushes still owed to the servers
            time.sleep(max(0.0, due - time.monotonic()))
            self.outbox.flush(time.monotonic())
        self.publish_progress()

    def step(self, waited: float) -> None:
        t0 = time.time()
        if self.first_step is None:
            self.first_step = time.monotonic()
        plan = self.core.begin_step(time.monotonic())
        x, y = next(self.batches)
        self.model.train()
        self.flat.zero_grad()
        loss = self.spec.workload.loss_fn(self.model(x), y)
        if not torch.isfinite(loss):
            raise RoleError(
                f"training diverged: loss is {loss.item()} on worker {self.id} at step {plan.step}: "
                "lower optim.lr or add optim.warmup_steps"
            )
        loss.backward()
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
        if len(self.core.choices) > self.logged_choices:
            self.logged_choices = log_new_choices(self.log, self.core.choices, self.logged_choices, w=self.id)
        push_bytes = 0
        for p in pushes:
            block = self.layout.blocks[p.block]
            payload = vector[block.start : block.stop]
            frames = encode("push", payload, w=self.id, j=p.block, base=p.base, step=p.step, ts=time.time())
            self.send(block.server, frames, payload.nbytes, plan.step)
            push_bytes += payload.nbytes
            self.links[block.server].push_bytes += payload.nbytes
        self.send_pulls(pulls)
        self.traffic.push_msgs += len(pushes)
        self.traffic.push_bytes += push_bytes
        self.step_times.append(t1 - t0)
        self.recent_stale.append(len(plan.stale))
        stale = sorted(plan.stale)
        self.log.write(
            "step",
            w=self.id,
            step=plan.step,
            t=t0,
            t_end=t1,
            t_push=time.time(),
            injected=injected,
            wait=waited,
            loss=loss.item(),
            fresh=len(plan.fresh),
            b=self.core.b,
            stale=stale,
            versions=list(plan.versions),
            push_bytes=push_bytes,
            push_msgs=len(pushes),
            pull_msgs=len(pulls),
            epoch=self.batches.epoch,
        )

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

    def send_pulls(self, pulls: list) -> None:
        now = time.monotonic()
        for q in pulls:
            server = self.layout.blocks[q.block].server
            self.pull_sent[q.block] = now
            self.send(server, encode("pull", w=self.id, j=q.block, want=q.want_gt, clock=q.clock), 0, self.core.step)
        self.traffic.pull_msgs += len(pulls)

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
        if msg.kind == "done":
            self.done = True
            return
        if msg.kind != "block":
            self.count_bad(f"unexpected '{msg.kind}'")
            return
        j, v = msg["j"], msg["v"]
        if not 0 <= j < self.layout.num_blocks or msg.payload.numel() != self.layout.blocks[j].size:
            self.count_bad(f"block {j} with {msg.payload.numel()} values does not fit the layout")
            return
        self.traffic.reply_msgs += 1
        self.traffic.reply_bytes += msg.payload.nbytes
        link = self.links[self.layout.blocks[j].server]
        link.reply_bytes += msg.payload.nbytes
        sent = self.pull_sent.pop(j, None)
        if sent is not None:
            link.rtt.append(time.monotonic() - sent)
        if self.core.on_block(j, v, time.monotonic()):
            self.flat.install(self.layout.blocks[j], msg.payload)
            self.traffic.installed += 1

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


def heartbeat(ctx: zmq.Context, endpoints: list[str], worker: int, interval: float, stop: threading.Event) -> None:
    """Tell servers this worker is alive while its main thread is busy in a long step."""
    socks = [connect_dealer(ctx, ep, f"w{worker}.hb".encode()) for ep in endpoints]
    try:
        while not stop.wait(interval):
            for sock in socks:
                sock.send_multipart(encode("hb", w=worker))
    finally:
        for sock in socks:
            sock.close(linger=0)


def run_worker(spec: RoleSpec) -> None:
    """Entry point of a worker process."""
    install_stop_handlers()  # glibc's adaptive allocator stays: see return_large_frees_to_os
    watch_parent(spec.watch_pid)
    torch.set_num_threads(spec.config.train.threads)
    worker = Worker(spec)
    store = connect_store(spec)
    worker.kv = store
    endpoints = [store.get(f"server/{s}").decode() for s in range(spec.config.cluster.servers)]
    ctx = zmq.Context()
    stop = threading.Event()
    beat = threading.Thread(
        target=heartbeat,
        args=(ctx, endpoints, worker.id, spec.config.timeouts.heartbeat_interval, stop),
        name="heartbeat",
        daemon=True,
    )
    status = "failed"
    try:
        worker.connect(ctx, endpoints)
        beat.start()
        worker.log.write(
            "start", w=worker.id, pid=os.getpid(), blocks=worker.layout.num_blocks, digest=worker.layout.digest
        )
        worker.log.flush()
        worker.run()
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        stop.set()
        for sock in worker.socks:
            try:
                sock.send_multipart(encode("bye", w=worker.id), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        worker.log.write("end", w=worker.id, status=status, steps=worker.core.step)
        worker.log.close()
        write_json(spec.path / "procs" / f"{spec.name}.json", {**worker.summary(), "status": status})
        try:
            store.set(f"done/worker/{worker.id}", status)
        except Exception:  # the store may be gone when the whole run is being torn down
            pass
        if beat.is_alive():
            beat.join(timeout=2)
        for sock in worker.socks:
            sock.close(linger=200)  # give 'bye' a moment to leave
        ctx.term()
