"""Evaluator process: measures the servers' θ over wall-clock time with the run's metric, off the critical path.

The metric is a function of the model: the built-in jobs' is test loss and accuracy; a user's script passes
its own to `weaksync.connect(model, evaluate=...)` (any figures: a regression loss, a BLEU score).

It runs at low priority (nice), peeks every block from the servers (a peek never touches the protocol
core), evaluates, and logs `eval` events. When every worker is done it takes the final measurement and
tells the servers to stop. With `train.eval_live` false it only takes snapshots while training runs and
evaluates them afterwards, so that on a machine with few cores evaluation competes with no training step.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial

import torch
import zmq
from torch import nn
from torch.utils.data import Dataset

from ..records.eventlog import EventLog
from ..training.evaluate import eval_mode, evaluate_loss_and_accuracy
from ..training.workload import seed_model_init
from ..transport.messages import BadMessage, Blocks, Peek, Stop, decode, encode
from ..transport.sockets import connect_dealer
from .flat import FlatModel, model_layout
from .spec import FINAL_MODEL, RoleError, RoleSpec, connect_store, install_stop_handlers, store_set_json, watch_parent

NICE = 10
DONE_POLL = 0.1  # seconds between checks for the end of training while waiting for the next snapshot
PEEK_AGAIN = 5.0  # seconds before the blocks a snapshot still lacks are asked for again (their server restarted)


MAX_PENDING_BYTES = 256 << 20
Snapshot = tuple[float, torch.Tensor, int, bool]  # (time taken, θ, total updates, final)
MetricFn = Callable[[nn.Module], "float | Mapping[str, float]"]  # the model (θ installed) -> figures


def test_metrics(test: Dataset, model: nn.Module) -> dict[str, float]:
    """The built-in jobs' metric: mean cross-entropy and top-1 accuracy on the test set."""
    loss, acc = evaluate_loss_and_accuracy(model, test)
    return {"accuracy": acc, "loss": loss}


def measure(metric: MetricFn | None, model: nn.Module, name: str) -> dict[str, float]:
    """The metric's figures as a dict of floats (a bare number is named after train.metric); the model's
    train/eval flags are restored, whatever the metric does with them."""
    if metric is None:
        return {}
    with eval_mode(model):
        value = metric(model)
    figures = value.items() if isinstance(value, Mapping) else [(name, value)]
    out = {}
    for key, v in figures:
        try:
            out[str(key)] = float(v)
        except (TypeError, ValueError):
            raise RoleError(
                f"the evaluate function returned {key}={v!r}: return a number or a dict of numbers"
            ) from None
    return out


class Evaluator:
    """Snapshots are taken on a timer by one thread (cheap: a peek of every block) and evaluated in
    order by the main thread, so each accuracy belongs to the moment its snapshot was taken even when
    evaluation lags behind at low priority."""

    def __init__(self, spec: RoleSpec, model: nn.Module, metric: MetricFn | None):
        cfg = spec.config
        self.spec = spec
        self.model = model
        self.metric = metric
        self.layout = model_layout(self.model, cfg.cluster.servers, cfg.cluster.blocks)
        self.flat = FlatModel(self.model, self.layout)
        self.log = EventLog(spec.path / "events" / "evaluator.jsonl")
        self.socks: list[zmq.Socket] = []
        self.pending: queue.Queue[Snapshot | None] = queue.Queue()
        self.pending_bytes = 0
        self.skipping = False

    def snapshot(self, timeout: float) -> tuple[torch.Tensor, int] | None:
        """θ as the servers hold it now (a copy) and the total number of updates; None on timeout."""
        theta = torch.empty(self.layout.total)
        versions: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        asked = 0.0
        while len(versions) < self.layout.num_blocks:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return None
            if now - asked >= PEEK_AGAIN:  # a peek that reached a server killed since is lost: ask again
                asked = now
                for server, sock in enumerate(self.socks):
                    missing = tuple(b.index for b in self.layout.blocks_of(server) if b.index not in versions)
                    if missing:
                        sock.send_multipart(encode(Peek(missing)))
            for sock, _ in poller.poll(int(min(left, PEEK_AGAIN) * 1000)):
                try:
                    msg = decode(sock.recv_multipart(copy=False))
                except BadMessage:
                    continue
                if not isinstance(msg, Blocks):
                    continue
                for j, version, values in zip(msg.blocks, msg.versions, msg.values):
                    if 0 <= j < self.layout.num_blocks and values.numel() == self.layout.blocks[j].size:
                        block = self.layout.blocks[j]
                        theta[block.start : block.stop] = values
                        versions[j] = version
        return theta, sum(versions.values())

    def take(self, final: bool = False) -> None:
        """Queue a snapshot for evaluation (skipped while too many wait, to bound memory)."""
        if self.pending_bytes > MAX_PENDING_BYTES and not final:
            if not self.skipping:
                self.log.write("eval-skip", t=time.time(), reason=f"{MAX_PENDING_BYTES >> 20} MiB of snapshots wait")
            self.skipping = True
            return
        self.skipping = False
        t = time.time()
        got = self.snapshot(self.spec.config.timeouts.connect)
        if got is None:
            self.log.write("eval-timeout", t=t)
            return
        theta, updates = got
        self.pending_bytes += theta.nbytes
        self.pending.put((t, theta, updates, final))

    def snapshots(self, store, done_keys: list[str], stop: threading.Event) -> None:
        """Timer thread: a snapshot every eval_interval until every worker is done, then a final one."""
        interval = self.spec.config.train.eval_interval
        try:
            while not stop.is_set() and not store.check(done_keys):
                next_at = time.monotonic() + interval
                self.take()
                # the end of training is noticed within DONE_POLL, however long eval_interval is
                while not stop.is_set() and time.monotonic() < next_at and not store.check(done_keys):
                    stop.wait(min(DONE_POLL, max(0.0, next_at - time.monotonic())))
            if not stop.is_set():
                self.take(final=True)
        finally:
            self.pending.put(None)

    def evaluate_pending(self, store, live: bool = True, training_over: Callable[[], None] | None = None) -> None:
        """Main thread: evaluate snapshots in the order they were taken, each as soon as it is taken or (not
        `live`) all of them once the final one is in; `training_over` runs between the two."""
        deferred: list[Snapshot] = []
        while (item := self.pending.get()) is not None:
            if live:
                self.evaluate(store, item)
            else:
                deferred.append(item)
                if self.pending_bytes > MAX_PENDING_BYTES // 2 and len(deferred) > 2:
                    deferred = self.thin(deferred)
        if training_over is not None:
            training_over()
        if deferred:
            torch.set_num_threads(os.cpu_count() or 1)  # training is over: the machine is the evaluator's
        for item in deferred:
            self.evaluate(store, item)

    def thin(self, deferred: list[Snapshot]) -> list[Snapshot]:
        """Keep every other waiting snapshot (and the newest), so a long run's snapshots fit in memory with a
        resolution that coarsens gradually instead of stopping."""
        kept = deferred[:-1:2] + deferred[-1:]
        self.pending_bytes -= sum(item[1].nbytes for item in deferred) - sum(item[1].nbytes for item in kept)
        self.log.write("eval-thin", t=time.time(), kept=len(kept), of=len(deferred))
        return kept

    def evaluate(self, store, item: Snapshot) -> None:
        t, theta, updates, final = item
        self.pending_bytes -= theta.nbytes
        self.flat.values.copy_(theta)
        if final:
            torch.save({k: v.clone() for k, v in self.model.state_dict().items()}, self.spec.path / FINAL_MODEL)
        figures = measure(self.metric, self.model, self.spec.config.train.metric)
        self.log.write("eval", t=t, t_done=time.time(), metrics=figures, updates=updates, final=final)
        try:
            store_set_json(store, "progress/eval", {**figures, "t": t})
        except Exception:
            pass


def run_evaluator(spec: RoleSpec) -> None:
    """Entry point of the built-in jobs' evaluator: the workload's model, scored on its test set."""
    seed_model_init(spec.config.run.seed)
    model = spec.workload.model_fn()
    _, test = spec.workload.data_fn()
    serve_evaluator(spec, model, partial(test_metrics, test))


def serve_evaluator(spec: RoleSpec, model: nn.Module, metric: MetricFn | None) -> None:
    install_stop_handlers()  # glibc's adaptive allocator stays: see return_large_frees_to_os
    watch_parent(spec.watch_pid)
    try:
        os.nice(NICE)
    except OSError:
        pass
    torch.set_num_threads(1)
    cfg = spec.config
    evaluator = Evaluator(spec, model, metric)
    store = connect_store(spec)
    endpoints = [store.get(f"server/{s}").decode() for s in range(cfg.cluster.servers)]
    ctx = zmq.Context()
    evaluator.socks = [connect_dealer(ctx, ep, b"evaluator", spec.keys) for ep in endpoints]
    done_keys = [f"done/worker/{w}" for w in range(cfg.cluster.workers)]
    stop = threading.Event()
    timer = threading.Thread(
        target=evaluator.snapshots, args=(connect_store(spec), done_keys, stop), name="snapshots", daemon=True
    )

    def stop_servers() -> None:
        for sock in evaluator.socks:
            try:
                sock.send_multipart(encode(Stop()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    t = cfg.train
    evaluator.log.write("metric", t=time.time(), name=t.metric, goal=t.goal, target=cfg.metric_target())
    try:
        timer.start()
        live = cfg.train.eval_live
        evaluator.evaluate_pending(store, live=live, training_over=None if live else stop_servers)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        timer.join(timeout=5)
        stop_servers()  # a second, harmless stop after deferred evaluations; the only one otherwise
        evaluator.log.close()
        for sock in evaluator.socks:
            sock.close(linger=500)
        ctx.term()
