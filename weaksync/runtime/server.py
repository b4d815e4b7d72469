"""Server process: a ZeroMQ ROUTER in front of the server core and its block store.

Single-threaded event loop: poll with a timeout bounded by the next push deadline and the heartbeat
check, decode and validate each message, feed the core, perform its actions.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import zmq
from torch import nn
from torch.distributed import Store
from zmq.utils.monitor import recv_monitor_message

from ..core import actions as act
from ..core.layout import MESSAGE_BYTES, BlockLayout, MessageCutter
from ..core.server import ServerCore
from ..records.eventlog import EventLog, log_new_choices
from ..records.files import write_atomically, write_json
from ..stragglers.delays import delayer_for
from ..training.optim import gradient_clip, lr_function, momentum_function, optimizer_factory
from ..training.workload import seed_model_init
from ..transport.messages import (
    BadMessage,
    Blocks,
    Bye,
    Done,
    Heartbeat,
    Hello,
    Leave,
    Payloads,
    Peek,
    Pull,
    Push,
    Refuse,
    Stop,
    Welcome,
    decode,
    encode,
    payload_nbytes,
    payload_problems,
)
from ..transport.security import EVALUATOR, LAUNCHER, PeerAuthenticator, worker_principal
from ..transport.sockets import bind_router, inbox_hwm
from .flat import block_values, model_layout
from .outbox import Outbox
from .resources import memory_figures, return_large_frees_to_os, trim_heap
from .spec import (
    RoleError,
    RoleSpec,
    checkpoint_file,
    connect_store,
    install_stop_handlers,
    store_set_json,
    watch_parent,
)
from .tensorbatch import TensorBatch

HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class Reply(NamedTuple):
    """A block on its way to a worker: the version the core named and the snapshot taken then."""

    block: int
    version: int
    values: torch.Tensor


class ReplyGroup(NamedTuple):
    """Blocks the core sent together (one Send) at `version`, with their values as taken then (a whole
    group's as its values tensor, `Payloads`)."""

    blocks: tuple[int, ...]
    version: int
    values: Sequence[torch.Tensor]


def worker_identity(worker: int) -> bytes:
    """The routing id a worker names itself with when the run has no keys."""
    return f"w{worker}".encode()


def principal_from_routing_id(identity: bytes) -> str | None:
    """Without CURVE a peer is who its routing id says (`w3`, `w3.hb`, `evaluator`, `launcher`)."""
    name = identity.decode(errors="replace").removesuffix(".hb")
    if name in (LAUNCHER, EVALUATOR):
        return name
    if name.startswith("w") and name[1:].isdigit():
        return worker_principal(int(name[1:]))
    return None


def build_initial_blocks(spec: RoleSpec, model: nn.Module) -> tuple[BlockLayout, dict[int, torch.Tensor]]:
    """The layout and θ₀ of this server's blocks (copies: the caller may drop the model afterwards)."""
    layout = model_layout(model, spec.config.cluster.servers, spec.config.cluster.blocks)
    return layout, block_values(model, layout, layout.blocks_of(spec.rank))


class Server:
    def __init__(self, spec: RoleSpec, model: nn.Module):
        cfg = spec.config
        self.spec = spec
        self.layout, initial = build_initial_blocks(spec, model)
        self.policy = cfg.policy(self.layout.num_blocks)
        self.reply_cut = MessageCutter(self.layout.owners, cfg.cluster.coalesce, self.layout.block_bytes)
        budget = cfg.cluster.workers * cfg.train.steps  # worker steps of the whole run
        self.core = ServerCore(
            self.policy,
            [b.index for b in self.layout.blocks_of(spec.rank)],
            budget,
            registration=True,
            expiry=cfg.timeouts.heartbeat,
            orphan_after=cfg.timeouts.connect,  # nobody sent 'stop' (evaluator lost): leave anyway
        )
        from .blockstore import BlockStore

        self.blockstore = BlockStore(
            self.layout,
            spec.rank,
            initial,
            optimizer_factory(cfg.optim),
            lr_function(cfg.optim, cfg.train.steps, cfg.cluster.workers, self.policy.k),
            momentum_function(cfg.optim, self.policy.k),
            gradient_clip(self.policy.k, self.policy.num_workers),
        )
        self.log = EventLog(spec.path / "events" / f"{spec.name}.jsonl")
        self.bad_messages: Counter[str] = Counter()
        self.secure = spec.keys is not None
        self.routes: dict[int, bytes] = {}  # worker -> the routing id of its data socket, learned from its messages
        self.refused_connections: Counter[str] = Counter()  # handshakes that failed (no CURVE, bad key)
        self.authenticator: PeerAuthenticator | None = None
        self.replies = 0
        self.reply_bytes = 0
        self.push_bytes = 0
        self.pull_msgs = 0
        self.push_msgs = 0
        self.stop_requested = False
        self.logged_choices = 0
        self.first_push: float | None = None  # the clock of time-windowed straggler rules starts here
        self.kv: Store | None = None  # the run's TCPStore, once connected
        rules, seed = cfg.all_stragglers(), cfg.run.seed + 1  # +1: the other direction of each link
        self.reply_delay = delayer_for(rules, "server", spec.rank, seed)
        self.link_delays = [delayer_for(rules, "link", w, seed, peer=spec.rank) for w in range(cfg.cluster.workers)]
        self.outbox = Outbox()
        self.reply_delays: list[float] = []
        self.unsent: dict[int, list[ReplyGroup]] = defaultdict(list)  # worker -> replies due
        self.push_delays: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=20000))
        self.last_checkpoint = time.monotonic()
        if spec.restarts and checkpoint_file(spec.path, spec.rank).is_file():
            self.restore(spec.path)  # this server was killed: it goes on from its last checkpoint in this run
        elif cfg.run.resume:
            self.restore(Path(cfg.run.resume))

    # -- checkpoints -----------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """θ of this server's blocks, their optimizer state, versions and the workers' steps, written
        atomically (a reader or a crash never sees half a file)."""
        doc = {"digest": self.layout.digest, "core": self.core.checkpoint(), "blocks": self.blockstore.state()}
        write_atomically(checkpoint_file(self.spec.path, self.spec.rank), lambda tmp: torch.save(doc, tmp))
        self.last_checkpoint = time.monotonic()

    def maybe_checkpoint(self, now: float) -> None:
        interval = self.spec.config.checkpoint.interval
        if interval is not None and now - self.last_checkpoint >= interval:
            self.save_checkpoint()
            self.log.write("checkpoint", s=self.spec.rank, t=time.time(), updates=self.core.updates)

    def restore(self, run_dir: Path) -> None:
        path = checkpoint_file(run_dir, self.spec.rank)
        doc = torch.load(path, weights_only=False)
        if doc["digest"] != self.layout.digest:
            raise RoleError(
                f"checkpoint {path} was written for layout {doc['digest']}, this run has {self.layout.digest}: "
                "resume with the same model, cluster.servers and cluster.blocks"
            )
        self.core.restore(doc["core"])
        self.blockstore.load(doc["blocks"])
        self.log.write(
            "restored",
            s=self.spec.rank,
            t=time.time(),
            path=str(path),
            updates=self.core.updates,
            restart=self.spec.restarts,
            versions={str(j): v for j, v in sorted(doc["core"]["versions"].items())},
        )

    def serve(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILURES) if self.secure else None
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        try:
            self._serve(sock, poller, monitor)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)

    def _serve(self, sock: zmq.Socket, poller: zmq.Poller, monitor: zmq.Socket | None) -> None:
        hb = self.spec.config.timeouts
        last_publish = 0.0
        while not self.stop_requested:
            now = time.monotonic()
            due = [t for t in (self.core.next_deadline(), self.outbox.next_due()) if t is not None]
            wait = max(0.0, min([hb.heartbeat_interval, *(t - now for t in due)]))
            if poller.poll(int(wait * 1000)):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.handle(sock, frames)
                    del frames  # free this message's buffer (a whole block) before ZeroMQ hands over the next
                if monitor is not None:
                    self.count_refused(monitor)
            now = time.monotonic()
            self.outbox.flush(now)
            if self.kv is not None and now - last_publish > 1.0:
                self.publish_progress()
                last_publish = now
            self.perform(sock, self.core.on_timer(now))
            self.send_replies(sock)
            self.maybe_checkpoint(now)

    def principal(self, frames: list) -> str | None:
        """Who sent this message: the principal its CURVE key was issued for (set by the authenticator), or
        without keys the name its routing id claims."""
        if self.secure:
            try:
                return frames[1].get("User-Id")
            except (zmq.ZMQError, AttributeError):
                return None
        return principal_from_routing_id(frames[0].bytes)

    def handle(self, sock: zmq.Socket, frames: list) -> None:
        identity = frames[0].bytes
        try:
            msg = decode(frames[1:])
        except BadMessage as exc:
            self.reject(identity, str(exc))
            return
        now = time.monotonic()
        principal = self.principal(frames)
        if isinstance(msg, (Push, Pull, Hello, Bye, Heartbeat)):
            if principal != worker_principal(msg.worker):
                self.reject(identity, f"'{msg.KIND}' claims worker {msg.worker} from {principal or 'an unknown peer'}")
                return
            if not isinstance(msg, Heartbeat):  # heartbeats come on a socket of their own
                self.routes[msg.worker] = identity
        control = principal in (LAUNCHER, EVALUATOR)
        match msg:
            case Push():
                self.push(sock, msg, now)
            case Pull():
                self.pull_msgs += 1
                self.perform(sock, self.core.on_pull_many(msg.worker, msg.blocks, msg.wants, msg.clock, now))
            case Hello():
                self.hello(sock, identity, msg, now)
            case Bye():
                self.perform(sock, self.core.on_bye(msg.worker, now))
            case Heartbeat():
                self.perform(sock, self.core.on_heartbeat(msg.worker, now))
            case Leave() if control:
                self.log.write("leave", s=self.spec.rank, w=msg.worker, why="launcher")
                self.perform(sock, self.core.worker_left(msg.worker, now, msg.pid))
            case Peek() if principal == EVALUATOR:
                held = [self.reply_item(j, self.core.version(j)) for j in msg.blocks if j in self.blockstore.blocks]
                self.send_cut(sock, identity, held)
            case Stop() if control:
                self.stop_requested = True
            case _:
                self.reject(identity, f"unexpected '{msg.KIND}' from {principal or 'an unknown peer'}")
        self.send_replies(sock)

    def push(self, sock: zmq.Socket, msg: Push, now: float) -> None:
        """The message goes to the core whole (its rules run once per group of blocks it carries alike); the
        tensor work of the whole message is then done together (`TensorBatch`), and the replies the updates
        release leave together, after the whole message (`send_replies`)."""
        if msg.sent_at is not None:  # one-way delay of this link (clocks of one host, or NTP-synced hosts)
            self.push_delays[msg.worker].append(time.time() - msg.sent_at)
        self.push_msgs += 1
        if self.first_push is None:
            self.first_push = now
        blocks = self.blockstore.blocks
        sizes = [blocks[j].size if j in blocks else None for j in msg.blocks]
        problems = payload_problems(msg.grads, sizes)
        self.push_bytes += payload_nbytes(msg.grads)
        for j, problem in zip(msg.blocks, problems):
            if problem:
                self.log.write("drop", s=self.spec.rank, w=msg.worker, j=j, reason="malformed", detail=problem)
        if len(set(msg.blocks)) < len(msg.blocks):  # one block twice: each gradient with its own actions
            for j, base, grad, problem in zip(msg.blocks, msg.bases, msg.grads, problems):
                self.perform(sock, self.core.on_push(msg.worker, j, base, msg.step, now, problem), (j,), (grad,))
            return
        actions = self.core.on_push_many(msg.worker, msg.blocks, msg.bases, msg.step, now, tuple(problems))
        self.perform(sock, actions, msg.blocks, msg.grads)

    def hello(self, sock: zmq.Socket, identity: bytes, msg: Hello, now: float) -> None:
        problem = None
        if msg.digest != self.layout.digest:
            problem = (
                f"layout mismatch: worker {msg.worker} built a model with layout {msg.digest}, server "
                f"{self.spec.rank} has {self.layout.digest}: every rank must build the same model, blocks and servers"
            )
            self.reject(identity, problem)
        actions = self.core.on_hello(msg.worker, now, problem, process=msg.pid)
        if any(isinstance(a, act.Welcome) for a in actions):
            self.log.write("hello", s=self.spec.rank, w=msg.worker, pid=msg.pid)
        self.perform(sock, actions)

    def perform(
        self,
        sock: zmq.Socket,
        actions: list,
        pushed: tuple[int, ...] = (),
        grads: Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Carry out the core's actions; `grads` are the pushed gradients (by block) the core's Accepts refer
        to. Their tensor work is batched (`TensorBatch`); block replies are only queued (with the snapshot of
        the version the core named): `send_replies` sends them, one message per worker."""
        if len(self.core.choices) > self.logged_choices:
            self.logged_choices = log_new_choices(self.log, self.core.choices, self.logged_choices, s=self.spec.rank)
        batch = TensorBatch(self.blockstore, self.core.steps_done() / self.policy.num_workers)
        updated: dict[tuple, list[int]] = {}  # the updates' records: one per set of blocks that moved alike
        for action in actions:
            if isinstance(action, act.Accept):
                assert grads is not None, "the core accepted a gradient that no push carried"
                if action.blocks == pushed:  # the whole message: its payload frame as received
                    batch.accept(action, grads)
                else:
                    by_block = dict(zip(pushed, grads))
                    batch.accept(action, [by_block[j] for j in action.blocks])
            elif isinstance(action, act.Send):
                batch.send(action)
            elif isinstance(action, act.EndRun):
                self.log.write("budget", s=self.spec.rank, steps=action.steps)
                for worker in sorted(self.core.members.registered):
                    self.send_to(sock, worker, encode(Done()))
            elif isinstance(action, act.Finished):
                self.send_to(sock, action.worker, encode(Done()))
            elif isinstance(action, act.Welcome):
                # a resumed run or a rejoining worker: it goes on from this clock
                reply = encode(Welcome(server=self.spec.rank, digest=self.layout.digest, clock=action.clock))
                self.send_to(sock, action.worker, reply)
                if action.rejoined:
                    self.log.write("rejoin", s=self.spec.rank, w=action.worker, clock=action.clock)
            elif isinstance(action, act.Refuse):
                self.send_to(sock, action.worker, encode(Refuse(reason=action.reason)))
            elif isinstance(action, act.Expired):
                self.log.write("leave", s=self.spec.rank, w=action.worker, why=f"silent for {action.silent_for:.1f}s")
            elif isinstance(action, act.Revived):
                self.log.write("rejoin", s=self.spec.rank, w=action.worker, clock=self.core.clocks[action.worker])
            elif isinstance(action, act.Orphaned):
                self.log.write("orphaned", s=self.spec.rank, waited=action.waited)
                self.stop_requested = True
            elif isinstance(action, act.Apply):
                batch.apply(action)
                k = self.core.k if action.quorum is None else action.quorum
                same = (
                    action.version,
                    action.step,
                    action.by_deadline,
                    k,
                    tuple((w, u) for w, u, _ in action.contributors),
                )
                updated.setdefault(same, []).extend(action.blocks)
            elif isinstance(action, act.Drop) and action.reason != "malformed":
                self.log.write(
                    "drop",
                    s=self.spec.rank,
                    w=action.worker,
                    j=list(action.blocks),
                    base=action.base,
                    v=action.version,
                    reason=action.reason,
                )
        for (v, step, by_deadline, k, contributors), blocks in updated.items():
            self.log.write(
                "update",
                s=self.spec.rank,
                j=blocks,
                v=v,
                step=step,
                by_deadline=by_deadline,
                k=k,
                contributors=[list(c) for c in contributors],
            )
        for send, values in batch.done():
            self.unsent[send.worker].append(ReplyGroup(send.blocks, send.version, values))

    def route(self, worker: int) -> bytes:
        """Where replies to a worker go: the socket its last hello, push or pull came from."""
        return self.routes.get(worker, worker_identity(worker))

    def send_to(self, sock: zmq.Socket, worker: int, frames: list) -> None:
        try:
            sock.send_multipart([self.route(worker), *frames])
        except zmq.ZMQError:
            pass  # already gone

    def reply_item(self, block: int, version: int) -> Reply:
        """A block as it is now, for a reply: its snapshot is never written again, however late it leaves."""
        return Reply(block, version, self.blockstore.snapshot(block))

    def send_replies(self, sock: zmq.Socket) -> None:
        """Send the replies queued by the message or timer just handled: one message per worker carrying its
        blocks (or one per block without coalescing)."""
        coalesce = self.reply_cut.coalesce
        for worker, groups in self.unsent.items():
            (first, *rest), identity = groups, self.route(worker)
            if (
                coalesce
                and not rest
                and isinstance(first.values, Payloads)
                and first.values.flat.nbytes <= MESSAGE_BYTES
            ):
                versions = (first.version,) * len(first.blocks)  # a whole group: its values tensor as is
                self.send_blocks(sock, identity, first.blocks, versions, first.values, worker)
                continue
            items = [Reply(j, g.version, v) for g in groups for j, v in zip(g.blocks, g.values)]
            self.send_cut(sock, identity, items, worker)
        self.unsent.clear()

    def send_cut(self, sock: zmq.Socket, identity: bytes, items: list[Reply], worker: int | None = None) -> None:
        """Send blocks to one peer in as many messages as the wire's rule cuts them into (one, up to 4 MiB, when
        coalesced; one per block otherwise), so no peer receives a whole share in one message."""
        for _, part in self.reply_cut.messages(items):
            blocks, versions, values = zip(*part)
            flat = values[0] if len(values) == 1 else torch.cat(values)  # the message's one payload frame
            self.send_blocks(sock, identity, blocks, versions, Payloads.of(values, flat), worker)

    def send_blocks(
        self,
        sock: zmq.Socket,
        identity: bytes,
        blocks: tuple[int, ...],
        versions: tuple[int, ...],
        payloads: Payloads,
        worker: int | None = None,
    ) -> None:
        """Reply with blocks (indices, versions, values in one frame); an injected server or link delay holds
        the message in the outbox."""
        frames = [identity, *encode(Blocks(blocks=blocks, versions=versions, values=payloads))]
        nbytes = payloads.flat.nbytes
        delay = 0.0
        if worker is not None and (self.reply_delay.active or self.link_delays[worker].active):
            elapsed = 0.0 if self.first_push is None else time.monotonic() - self.first_push
            if self.reply_delay.active:
                delay += self.reply_delay.sample(versions[0], elapsed=elapsed)
            if self.link_delays[worker].active:
                delay += self.link_delays[worker].sample(versions[0], nbytes=nbytes, elapsed=elapsed)
        if delay > 0:
            self.reply_delays.append(delay)
            self.outbox.put(time.monotonic() + delay, identity, sock, frames)
            self.replies += 1
            self.reply_bytes += nbytes
            return
        try:
            sock.send_multipart(frames, copy=False)
        except zmq.ZMQError:  # the peer is gone (ROUTER_MANDATORY); the heartbeat check handles it
            self.bad_messages["unroutable reply"] += 1
            return
        self.replies += 1
        self.reply_bytes += nbytes

    def reject(self, identity: bytes, reason: str) -> None:
        self.bad_messages[reason.split(":")[0]] += 1
        self.log.write("reject", s=self.spec.rank, peer=identity.decode(errors="replace"), reason=reason)

    def publish_progress(self) -> None:
        """Counters for the live display: updates and dropped contributions by reason."""
        store_set_json(
            self.kv,
            f"progress/server/{self.spec.rank}",
            {
                "updates": self.core.updates,
                "drops": dict(self.core.drops),
                "k": self.core.k,
                "t": time.time(),
                "accepted_by_worker": dict(self.core.accepted),
                "dropped_by_worker": dict(self.core.dropped),
            },
        )

    def count_refused(self, monitor: zmq.Socket) -> None:
        """Connections that failed their handshake: a peer without CURVE or with a key of no principal of
        this run (the authenticator knows which key and why)."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # those the authenticator counted, with the reason
                self.refused_connections["no CURVE handshake"] += 1
                self.log.write("refused", s=self.spec.rank, reason="no CURVE handshake")

    def refusals(self) -> dict[str, int]:
        auth = self.authenticator.refusals() if self.authenticator is not None else {}
        return {**dict(self.refused_connections), **auth}

    def summary(self) -> dict:
        return {
            "role": "server",
            "id": self.spec.rank,
            "pid": os.getpid(),
            "blocks": sorted(self.blockstore.blocks),
            "versions": {j: self.core.version(j) for j in self.blockstore.blocks},
            "updates": self.core.updates,
            "folded_pushes": self.core.folded,
            "clipped_updates": self.blockstore.clipped,
            "k": self.core.k,
            "gradients_applied": self.core.gradients_applied,
            "accepted": sum(self.core.accepted.values()),
            "accepted_by_worker": dict(self.core.accepted),
            "dropped_by_worker": dict(self.core.dropped),
            "drops": dict(self.core.drops),
            "bad_messages": dict(self.bad_messages),
            "refused_connections": self.refusals(),
            "push_msgs": self.push_msgs,
            "push_bytes": self.push_bytes,
            "pull_msgs": self.pull_msgs,
            "reply_msgs": self.replies,
            "reply_bytes": self.reply_bytes,
            "state_bytes": self.blockstore.nbytes(),
            **memory_figures(),
            "links_in": {
                str(w): {
                    "pushes": len(d),
                    "push_delay_p50": float(np.percentile(d, 50)),
                    "push_delay_p95": float(np.percentile(d, 95)),
                }
                for w, d in self.push_delays.items()
                if d
            },
            "injected_reply_delay": {
                "replies": len(self.reply_delays),
                "p50": float(np.percentile(self.reply_delays, 50)) if self.reply_delays else 0.0,
                "p95": float(np.percentile(self.reply_delays, 95)) if self.reply_delays else 0.0,
            },
        }


def run_server(spec: RoleSpec) -> bool:
    """Entry point of a built-in server process: the workload's model, built right after seeding (so θ₀ is
    the same on every rank) and dropped, its memory given back, once its blocks are copied out."""
    seed_model_init(spec.config.run.seed)
    model = spec.workload.model_fn()
    server = Server(spec, model)
    del model
    trim_heap()
    return serve(spec, server)


def serve_server(spec: RoleSpec, model: nn.Module) -> bool:
    """Serve the blocks of `model` that this rank owns (a user's script: `weaksync.connect` on a server rank)."""
    return serve(spec, Server(spec, model))


REBIND_SECONDS = 5.0  # a restarted server retries its old port this long (the killed process's socket may linger)


def bind_server(spec: RoleSpec, store: Store, ctx: zmq.Context, rcvhwm: int) -> tuple[zmq.Socket, str]:
    """The server's socket. A restarted server binds the port it had, which its peers' sockets keep
    reconnecting to; a first start takes a free port."""
    host, port = spec.config.cluster.host, None
    if spec.restarts and store.check([f"server/{spec.rank}"]):
        port = int(store.get(f"server/{spec.rank}").decode().rsplit(":", 1)[1])
    deadline = time.monotonic() + REBIND_SECONDS
    while True:
        try:
            return bind_router(ctx, host, rcvhwm, spec.keys, port=port)
        except zmq.ZMQError as exc:
            if time.monotonic() > deadline:
                raise RoleError(
                    f"server {spec.rank} restarted but cannot bind its port {port} again ({exc}): "
                    "another process took it; stop that process or restart the run with --resume"
                ) from None
            time.sleep(0.1)


def serve(spec: RoleSpec, server: Server) -> bool:
    """Bind, publish the endpoint, serve until told to stop. Returns False when it was interrupted
    (SIGINT/SIGTERM) instead."""
    install_stop_handlers()
    return_large_frees_to_os()
    watch_parent(spec.watch_pid)
    torch.set_num_threads(spec.config.train.threads)
    store = connect_store(spec)
    server.kv = store
    ctx = zmq.Context()
    if spec.keys is not None:  # before the socket binds: without a ZAP handler libzmq admits any key
        server.authenticator = PeerAuthenticator(ctx, spec.keys)
        server.authenticator.start()
    sizes = [server.layout.block_bytes[j] for j in server.blockstore.blocks]
    largest = max(sizes)  # the largest message a worker sends: a block, or coalesced blocks up to MESSAGE_BYTES
    if spec.config.cluster.coalesce:
        largest = max(largest, min(sum(sizes), MESSAGE_BYTES))
    sock, endpoint = bind_server(spec, store, ctx, inbox_hwm(largest))
    try:
        store.set(f"server/{spec.rank}", endpoint)
        store.set(f"layout/{spec.rank}", server.layout.digest)
        server.log.write(
            "start",
            s=spec.rank,
            pid=os.getpid(),
            endpoint=endpoint,
            blocks=sorted(server.blockstore.blocks),
            restart=spec.restarts,
        )
        server.log.flush()
        server.serve(sock)
        return True
    except KeyboardInterrupt:
        server.log.write("interrupted", s=spec.rank)
        return False
    finally:
        # the launcher's SIGTERM that follows a Ctrl-C must not cut the last checkpoint or the figures short:
        # from here the process only finishes (if it hangs, the launcher's SIGKILL after the grace ends it)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if spec.config.checkpoint.interval is not None:
            try:
                server.save_checkpoint()  # the state at the stop: a resumed run loses nothing of it
            except OSError as exc:
                server.log.write("checkpoint-failed", s=spec.rank, error=str(exc))
        server.log.write("end", s=spec.rank)
        server.log.close()
        write_json(spec.path / "procs" / f"{spec.name}.json", server.summary())
        sock.close(linger=0)
        if server.authenticator is not None:
            server.authenticator.stop()
        ctx.term()
