"""The all-reduce baseline: PyTorch DistributedDataParallel (gloo, CPU) on the same model, data shards,
per-worker batch size, optimizer and LR schedule, step budget and straggler delays as a weaksync run,
writing a run directory that weaksync's summary and report tools read (mode "ddp", no servers).

Where the injected compute delay goes: DDP reduces gradients in buckets from autograd hooks while the
backward pass runs, and `loss.backward()` returns only once every bucket's all-reduce has finished. A
comm hook wraps the default all-reduce and, on the last bucket (the one that becomes ready when the
backward pass has produced every gradient), sleeps the injected time before launching that bucket's
all-reduce. So the delay lands exactly where weaksync's worker sleeps (after the gradients, before they
are sent), the earlier buckets still overlap with the backward pass as in stock DDP, and every peer's
backward waits in the all-reduce for the straggler, which is what a slow rank does to synchronous SGD.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed import PrefixStore, TCPStore

from ..config import Config, ConfigError, dump_config
from ..records.eventlog import EventLog
from ..records.files import write_json
from ..runtime.launcher import (
    INTERRUPTED,
    PRELOAD,
    RunResult,
    describe_exit,
    finish_run,
    make_run_dir,
    prepare,
)
from ..runtime.resources import peak_rss_bytes
from ..runtime.spec import (
    FINAL_MODEL,  # rank 0's model after the last step, as weaksync's evaluator saves it
    RoleError,
    install_stop_handlers,
    watch_parent,
)
from ..runtime.supervisor import Supervisor
from ..stragglers.delays import delayer_for
from ..training.data import BatchStream, shard_indices
from ..training.evaluate import evaluate_loss_and_accuracy
from ..training.optim import make_optimizer
from ..training.schedule import lr_at
from ..training.workload import Workload, seed_model_init


@dataclass
class DdpSpec:
    """What one rank needs; picklable, sent to the forkserver child."""

    rank: int
    config: Config
    workload: Workload
    run_dir: str
    store_port: int
    run_id: str
    watch_pid: int

    @property
    def name(self) -> str:
        return f"worker-{self.rank}"

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


class _DelayState:
    """The comm hook's state: sleeps the injected compute delay once per step, before the last bucket."""

    def __init__(self, delayer: Any) -> None:
        self.delayer = delayer
        self.step = 0
        self.t0 = 0.0
        self.first: float | None = None  # the first step's start: the clock of time-windowed rules
        self.injected = 0.0
        self.t_end: float | None = None

    def begin(self, step: int, t0: float) -> None:
        self.step, self.t0, self.injected, self.t_end = step, t0, 0.0, None
        if self.first is None:
            self.first = t0

    def before_reduce(self) -> None:
        if self.t_end is not None:  # already slept this step
            return
        if self.delayer.active:
            now = time.time()
            self.injected = self.delayer.sample(self.step, measured=now - self.t0, elapsed=now - (self.first or now))
            if self.injected > 0:
                time.sleep(self.injected)  # a synthetic straggler: compute took this much longer
        self.t_end = time.time()


def _delayed_allreduce(state, bucket):  # noqa: ANN001, ANN201  DDP rejects string annotations here
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    if bucket.is_last():
        state.before_reduce()
    return allreduce_hook(None, bucket)


def _train(spec: DdpSpec, log: EventLog, status: dict[str, Any]) -> None:
    cfg = spec.config
    rank, world = spec.rank, cfg.cluster.workers
    timeout = timedelta(seconds=max(cfg.timeouts.connect, cfg.timeouts.progress))
    client = TCPStore("127.0.0.1", spec.store_port, is_master=False, timeout=timedelta(seconds=cfg.timeouts.connect))
    store = PrefixStore(f"weaksync-ddp/{spec.run_id}/", client)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    # on failure no destroy_process_group: it can block on a collective that a failed peer never joins;
    # the process exits right after recording the error, which closes its gloo pairs and wakes the peers
    seed_model_init(cfg.run.seed)
    model = spec.workload.model_fn()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    delay = _DelayState(delayer_for(cfg.all_stragglers(), "worker", rank, cfg.run.seed))
    ddp.register_comm_hook(delay, _delayed_allreduce)
    optimizer = make_optimizer(cfg.optim, list(ddp.parameters()))
    train, test = spec.workload.data_fn()
    shard = shard_indices(len(train), world, rank, cfg.run.seed)
    batches = BatchStream(train, shard, cfg.train.batch_size, seed=cfg.run.seed * 7919 + rank)
    o = cfg.optim
    snapshots: list[tuple[float, int, dict[str, torch.Tensor]]] = []
    last_snapshot = time.time()
    log.write("start", w=rank, pid=os.getpid(), blocks=0, digest=None)
    log.flush()
    prev_end = time.time()
    for step in range(cfg.train.steps):
        t0 = time.time()
        delay.begin(step, t0)
        lr = lr_at(step, base_lr=o.lr, total_steps=cfg.train.steps, schedule=o.schedule,
                   warmup_steps=o.warmup_steps, step_size=o.step_size, gamma=o.gamma)  # fmt: skip
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        ddp.train()
        optimizer.zero_grad(set_to_none=True)
        loss = spec.workload.loss_fn(ddp(x), y)
        if not torch.isfinite(loss):
            raise RoleError(
                f"training diverged: loss is {loss.item()} on worker {rank} at step {step}: "
                "lower optim.lr or add optim.warmup_steps"
            )
        loss.backward()  # returns once every bucket is all-reduced, the straggler's included
        t_reduced = time.time()
        if delay.t_end is None:  # no gradient bucket (a model without trainable parameters)
            delay.before_reduce()
        optimizer.step()
        t_push = time.time()
        status["steps"] = step + 1
        status["compute"].append(delay.t_end - t0)
        status["injected"] += delay.injected
        log.write(
            "step", w=rank, step=step, t=t0, t_end=delay.t_end, t_push=t_push, injected=delay.injected,
            wait=max(0.0, t_reduced - delay.t_end), loss=loss.item(), fresh=1, stale=[], versions=[step],
            push_bytes=0, push_msgs=0, pull_msgs=0, epoch=batches.epoch, gap=t0 - prev_end, lr=lr,
        )  # fmt: skip
        prev_end = t_push
        if rank == 0 and t_push - last_snapshot >= cfg.train.eval_interval:
            snapshots.append((t_push, step + 1, _clone(model)))
            last_snapshot = t_push
    dist.barrier()
    # Keep DDP alive until the process exits: destroying its reducer after the process group is gone
    # could block forever in a futex wait (seen once, in a CI run of the DDP tests); _entry ends with os._exit.
    status["keep_alive"] = ddp
    dist.destroy_process_group()
    if rank == 0:  # evaluate after training, so rank 0 never slows its peers down
        torch.save(model.state_dict(), spec.path / FINAL_MODEL)
        snapshots.append((prev_end, cfg.train.steps, _clone(model)))
        evals = EventLog(spec.path / "events" / "evaluator.jsonl")
        try:
            for i, (t, updates, state) in enumerate(snapshots):
                model.load_state_dict(state)
                loss_value, acc = evaluate_loss_and_accuracy(model, test)
                final = i == len(snapshots) - 1
                evals.write("eval", t=t, t_done=time.time(), accuracy=acc, loss=loss_value, updates=updates,
                            final=final)  # fmt: skip
        finally:
            evals.close()


def _clone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _entry(spec: DdpSpec) -> None:
    install_stop_handlers()
    watch_parent(spec.watch_pid)
    torch.set_num_threads(spec.config.train.threads)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only, like the embedded launcher
    log = EventLog(spec.path / "events" / f"{spec.name}.jsonl")
    status: dict[str, Any] = {"steps": 0, "compute": [], "injected": 0.0}
    state, code = "failed", 0
    try:
        _train(spec, log, status)
        state = "done"
    except KeyboardInterrupt:
        state, code = "interrupted", 130
    except (RoleError, ConfigError) as exc:
        _record_error(spec, str(exc))
        code = 3
    except Exception as exc:
        _record_error(spec, f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        log.write("end", w=spec.rank, status=state, steps=status["steps"])
        log.close()
        times = np.asarray(status["compute"]) if status["compute"] else np.zeros(1)
        write_json(
            spec.path / "procs" / f"{spec.name}.json",
            {
                "role": "worker", "id": spec.rank, "pid": os.getpid(), "steps": status["steps"],
                "compute_p50": float(np.percentile(times, 50)), "compute_p95": float(np.percentile(times, 95)),
                "push_msgs": 0, "push_bytes": 0, "pull_msgs": 0, "reply_msgs": 0, "reply_bytes": 0,
                "installed": 0, "ignored_replies": 0, "bad_messages": {}, "peak_rss_bytes": peak_rss_bytes(),
                "links": {}, "injected_seconds": float(status["injected"]), "status": state,
            },
        )  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: torch's DDP and gloo destructors are not needed and can block


def _record_error(spec: DdpSpec, text: str) -> None:
    path = spec.path / "procs" / f"{spec.name}.error"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.splitlines()[0] if text else "unknown error")


def ddp_meta(config: Config, meta: dict[str, Any]) -> dict[str, Any]:
    """weaksync's meta.json fields, as a synchronous all-reduce run describes them."""
    n = config.cluster.workers
    return {
        **meta,
        "mode": "ddp",
        "num_workers": n,
        "num_servers": 0,
        "num_blocks": 0,
        "k": n,
        "b": None,
        "tau": 0,
        "push_deadline": None,
        "pull_deadline": None,
        "ssp_slack": None,
        "layout_digest": None,
        "backend": "gloo",
    }


def run_ddp(config: Config, workload: Workload | None = None, poll_interval: float = 0.1) -> RunResult:
    """Train with torch DDP on cluster.workers local processes; returns the run directory and its summary,
    raises RunFailed (every process stopped) when a rank fails or on Ctrl-C."""
    workload, meta = prepare(config, workload)
    if config.run.name is None:  # the default name says the mode: ddp, not the unused sync.mode
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-ddp-{uuid.uuid4().hex[:4]}"
        config = config.model_copy(update={"run": config.run.model_copy(update={"name": name})})
    run_dir = make_run_dir(config)
    (run_dir / "config.yaml").write_text(dump_config(config))
    write_json(run_dir / "meta.json", ddp_meta(config, meta))
    store = TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=config.timeouts.connect)
    )
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, "weaksync.bench.ddp"])
    processes = Supervisor(config.timeouts.shutdown)
    throttle = None
    failure: str | None = None
    try:
        for rank in range(config.cluster.workers):
            spec = DdpSpec(rank, config, workload, str(run_dir), store.port, run_dir.name, os.getpid())
            processes.spawn(spec.name, ctx, _entry, (spec,))
        workers_throttled = {n: f for n, f in config.throttle.items() if n in processes.names()}
        if workers_throttled:
            from ..stragglers.cgroup import CpuThrottle

            throttle = CpuThrottle(run_dir.name)
            for name, fraction in workers_throttled.items():
                throttle.set(name, processes.pid(name), fraction)
        failure = _watch(processes, run_dir, poll_interval)
    except KeyboardInterrupt:
        failure = INTERRUPTED
    finally:
        killed = processes.stop()
        if throttle is not None:
            throttle.close()
        del store  # closes the store's server socket
    return finish_run(run_dir, config, failure, killed, len(processes))


def _watch(processes: Supervisor, run_dir: Path, poll_interval: float) -> str | None:
    """Wait until every rank exited; a failed rank fails the run (all-reduce cannot go on without it)."""
    while True:
        exited = processes.exited()
        failed = [name for name, code in exited.items() if code != 0]
        if failed:
            # a rank that fails closes its gloo pairs, so its peers fail next with "Connection reset by
            # peer": the oldest error file is the cause, written before that rank exited
            errors = sorted((run_dir / "procs").glob("worker-*.error"), key=lambda f: f.stat().st_mtime_ns)
            name = errors[0].stem if errors else failed[0]
            why = errors[0].read_text().strip() if errors else None
            code = exited.get(name)
            state = describe_exit(code) if code is not None else "failed"
            return (
                f"{name} stopped unexpectedly ({state}{': ' + why if why else ''}); "
                "stopping the run (DDP needs every rank)"
            )
        if len(exited) == len(processes):
            return None
        time.sleep(poll_interval)
