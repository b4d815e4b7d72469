"""The embedded default: start S servers, N workers and an evaluator on this machine (loopback only),
watch them, and stop every one of them on success, on failure and on Ctrl-C.

Processes come from a forkserver that has torch preloaded, so starting 7 of them costs one torch import.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import zmq
from torch.distributed import PrefixStore, TCPStore

from ..config import Config, ConfigError, dump_config, load_config
from ..errors import WeaksyncError
from ..records.eventlog import EventLog
from ..records.files import write_json
from ..report.summary import summarize_run
from ..stragglers.cgroup import CpuThrottle
from ..training.workload import Workload, builtin_workload, seed_model_init
from ..transport.messages import Leave, encode
from ..transport.security import LAUNCHER, RunKeys
from ..transport.sockets import connect_dealer
from .flat import model_layout
from .resources import freeze_inherited_objects
from .spec import FINAL_MODEL, RoleError, RoleSpec, checkpoint_file, principal_of, run_meta, store_prefix
from .supervisor import Supervisor

PRELOAD = [
    "weaksync.runtime.preload_signals",  # first: a Ctrl-C during the preload is the launcher's to handle
    "torch",
    "torch._dynamo",  # torch.optim imports it on first use: pay it once here, not in every server
    "sklearn.datasets",
    "weaksync.runtime.server",
    "weaksync.runtime.worker",
    "weaksync.runtime.evaluator",
    "weaksync.training.models",
    "weaksync.training.data",
]
ProgressCallback = Callable[[dict[str, Any]], None]


class RunFailed(WeaksyncError, RuntimeError):
    """The run stopped early; the message says which process and why."""


class RunInterrupted(RunFailed):
    """The user stopped the run (Ctrl-C or SIGTERM): callers running several (bench) stop too."""


INTERRUPTED = "interrupted by Ctrl-C"


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """The trained model: a standard state_dict, `model.load_state_dict(torch.load(path))`."""
        return self.run_dir / FINAL_MODEL

    def state_dict(self) -> dict[str, Any]:
        """The trained model's state_dict (θ at the end of the run, as the evaluator measured it)."""
        if not self.model_path.exists():
            raise RunFailed(f"{self.model_path} is missing: the run ended before its final evaluation")
        return torch.load(self.model_path)


def _entry(spec: RoleSpec) -> None:
    freeze_inherited_objects()  # keep the forkserver's preloaded objects shared: a full gc would copy them
    from .evaluator import run_evaluator
    from .script import run_script
    from .server import run_server
    from .worker import run_worker

    target = {"server": run_server, "worker": run_worker, "evaluator": run_evaluator}[spec.role]
    if spec.script is not None:
        target = run_script
    try:
        target(spec)
    except KeyboardInterrupt:
        os._exit(130)
    except (RoleError, ConfigError) as exc:
        _record_error(spec, str(exc))
        os._exit(3)
    except Exception as exc:
        _record_error(spec, f"{type(exc).__name__}: {exc}")
        raise


def _record_error(spec: RoleSpec, text: str) -> None:
    """Leave the reason where the launcher reads it, so its one-line failure message can name it."""
    path = spec.path / "procs" / f"{spec.name}.error"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.splitlines()[0] if text else "unknown error")


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def prepare(config: Config, workload: Workload | None) -> tuple[Workload, dict[str, Any]]:
    """Validate everything that can be checked before a process starts (model, data, k, b vs B)."""
    if workload is None:
        from ..training.models import MODEL_NAMES
        from ..training.sources import check_data_source

        if config.model.name not in MODEL_NAMES:
            raise ConfigError(
                f"model.name: unknown model '{config.model.name}': choose one of {', '.join(MODEL_NAMES)}"
            )
        check_data_source(config.data.name, config.data.dir)
        workload = builtin_workload(
            config.model.name, config.data.name, config.data.dir, config.run.seed, config.data.synthetic_size
        )
    seed_model_init(config.run.seed)
    try:
        layout = model_layout(workload.model_fn(), config.cluster.servers, config.cluster.blocks)
    except ValueError as exc:
        raise ConfigError(f"cluster.blocks: {exc}") from None
    config.policy(layout.num_blocks)  # k, b against B
    check_resume(config)
    if config.throttle:
        from ..stragglers.cgroup import available

        reason = available()
        if reason:
            raise ConfigError(f"throttle: {reason}")
    return workload, run_meta(config, layout)


def check_resume(config: Config) -> None:
    """A run to resume must have a checkpoint of every server."""
    if config.run.resume is None:
        return
    run_dir = Path(config.run.resume)
    missing = [s for s in range(config.cluster.servers) if not checkpoint_file(run_dir, s).is_file()]
    if missing:
        raise ConfigError(
            f"run.resume: '{run_dir}' has no checkpoint of server(s) {missing}: pass a run directory whose "
            "servers checkpointed (checkpoint.interval), with the same cluster.servers"
        )


def resume_config(run_dir: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The configuration of a stopped run, to continue it from its checkpoints in a new run directory."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume: '{run_dir}' is not a run directory (no config.yaml): pass a folder under runs/")
    previous = load_config(run_dir / "config.yaml")
    name = f"{run_dir.name}-resumed" if previous.run.name else None
    return load_config(
        run_dir / "config.yaml",
        {"run.name": name, **{k: v for k, v in (overrides or {}).items() if v is not None}, "run.resume": str(run_dir)},
    )


def recorded_script(run_dir: Path) -> Script:
    """The script (and its arguments) a `weaksync run` wrote into its run directory: what --resume reruns."""
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not isinstance(meta.get("script"), str):
        raise ConfigError(
            f"--resume: '{run_dir}' was not a `weaksync run SCRIPT` run (its meta.json names no script): "
            "name the script to run, or resume a `weaksync train` run with `weaksync train --resume`"
        )
    return Script(meta["script"], tuple(str(a) for a in meta.get("script_args", [])))


def check_script(path: str) -> None:
    """A script to run must exist and be Python, before any process starts."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"script '{path}' does not exist: pass the path of your training script")
    if p.suffix != ".py":
        raise ConfigError(f"script '{path}' is not a .py file: pass a Python script that calls weaksync.connect")


def make_run_dir(config: Config) -> Path:
    name = config.run.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{config.sync.mode}-{uuid.uuid4().hex[:4]}"
    run_dir = Path(config.run.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run.name: run directory '{run_dir}' already exists: choose another run.name or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def finish_run(run_dir: Path, config: Config, failure: str | None, killed: list[str], processes: int) -> RunResult:
    """Summarise a run that has ended; a failed one raises RunFailed with the reason on one line."""
    summary = summarize_run(run_dir, config)
    if failure:
        summary["failure"] = failure
        write_json(run_dir / "summary.json", summary)
        more = f"; killed after the {config.timeouts.shutdown:.0f}s grace: {', '.join(killed)}" if killed else ""
        error = RunInterrupted if failure == INTERRUPTED else RunFailed
        raise error(f"{failure}; all {processes} processes stopped{more}; logs in {run_dir}")
    return RunResult(run_dir, summary)


@dataclass(frozen=True)
class Script:
    """`weaksync run PATH ARGS...`: a user's script started in every role."""

    path: str
    argv: tuple[str, ...] = ()


class LocalCluster:
    """The processes of one embedded run and the store they meet at."""

    def __init__(self, config: Config, workload: Workload | None, run_dir: Path, script: Script | None = None):
        self.config = config
        self.workload = workload
        self.script = script
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.store = TCPStore(
            "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=config.timeouts.connect)
        )
        self.prefixed = PrefixStore(store_prefix(self.run_id), self.store)
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.processes = Supervisor(config.timeouts.shutdown)
        # CURVE keys of this run: made here, handed to each process with its start-up arguments
        self.keys = RunKeys.generate(config.cluster.workers) if config.security.curve else None
        self.own_keys = self.keys.for_principal(LAUNCHER) if self.keys else None
        self.gone: set[str] = set()
        self.throttle: CpuThrottle | None = None
        self.restarts: Counter[str] = Counter()
        self.log = EventLog(run_dir / "events" / "launcher.jsonl", flush_interval=0.0)

    def failure_rule(self, role: str) -> tuple[str, str]:
        """What a failure of this role does (restart, stop, continue), and the config setting that says so for
        the failure message; an evaluator's failure stops the run."""
        if role == "worker":
            return self.config.on_worker_failure, f"on_worker_failure={self.config.on_worker_failure}"
        if role == "server":
            return self.config.on_server_failure, f"on_server_failure={self.config.on_server_failure}"
        return "stop", "an evaluator is never restarted"

    def may_restart(self, name: str, code: int) -> bool:
        """Restart a role that died, unless its rule says stop, it stopped on a reason it stated (exit 3: a
        restart would meet it again) or the run has used its max_restarts."""
        rule, _ = self.failure_rule(name.split("-")[0])
        return rule == "restart" and code != 3 and sum(self.restarts.values()) < self.config.max_restarts

    def restart(self, name: str, code: int) -> None:
        """Start a new process for a role that died. A worker's servers hear first that the old process is
        gone (its pulls are void, quorums stop waiting for it); its hello then brings it back at the slowest
        live clock. A server restores its last checkpoint and binds its old port, where its peers reconnect."""
        role, rank = name.split("-")[0], int(name.split("-")[1])
        old_pid = self.processes.pid(name)
        if role == "worker":
            self.tell_servers(Leave(rank, pid=old_pid))
        self.restarts[name] += 1
        spec = replace(self.spec(role, rank), restarts=self.restarts[name])
        proc = self.processes.respawn(name, self.ctx, _entry, (spec,))
        if self.throttle is not None and name in self.config.throttle:
            self.throttle.set(name, proc.pid, self.config.throttle[name])
        self.log.write(
            "restart", name=name, why=describe_exit(code), pid=old_pid, new_pid=proc.pid, n=self.restarts[name]
        )

    def spec(self, role: str, rank: int) -> RoleSpec:
        return RoleSpec(
            role,
            rank,
            self.config,
            self.workload,
            "127.0.0.1",
            self.store.port,
            self.run_id,
            str(self.run_dir),
            watch_pid=os.getpid(),
            script=self.script.path if self.script else None,
            argv=self.script.argv if self.script else (),
            keys=self.keys.for_principal(principal_of(role, rank)) if self.keys else None,
        )

    def start(self) -> None:
        c = self.config.cluster
        specs = [self.spec("server", s) for s in range(c.servers)] + [self.spec("evaluator", 0)]
        specs += [self.spec("worker", w) for w in range(c.workers)]
        for spec in specs:
            self.processes.spawn(spec.name, self.ctx, _entry, (spec,))
        if self.config.throttle:  # real slowdowns: the kernel caps these processes' CPU
            self.throttle = CpuThrottle(self.run_id)
            for name, fraction in self.config.throttle.items():
                self.throttle.set(name, self.processes.pid(name), fraction)

    def error_of(self, name: str) -> str | None:
        path = self.run_dir / "procs" / f"{name}.error"
        return path.read_text().strip() if path.exists() else None

    def tell_servers(self, msg: Leave) -> None:
        """Send a control message to every server as the launcher."""
        ctx = zmq.Context.instance()
        for s in range(self.config.cluster.servers):
            try:
                endpoint = self.prefixed.get(f"server/{s}").decode()
            except Exception:
                continue
            sock = connect_dealer(ctx, endpoint, b"launcher", self.own_keys)
            sock.send_multipart(encode(msg))
            sock.close(linger=1000)

    def progress(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workers": {}}
        for w in range(self.config.cluster.workers):
            key = f"progress/worker/{w}"
            if self.prefixed.check([key]):
                out["workers"][w] = json.loads(self.prefixed.get(key))
        for s in range(self.config.cluster.servers):
            key = f"progress/server/{s}"
            if self.prefixed.check([key]):
                out.setdefault("servers", {})[s] = json.loads(self.prefixed.get(key))
        if self.prefixed.check(["progress/eval"]):
            out["eval"] = json.loads(self.prefixed.get("progress/eval"))
        return out


def run_local(
    config: Config,
    workload: Workload | None = None,
    on_progress: ProgressCallback | None = None,
    poll_interval: float = 0.25,
    script: Script | None = None,
) -> RunResult:
    """Train with the embedded cluster, on a built-in or given workload or in a user's `script`; returns the
    run directory and its summary, raises RunFailed."""
    if script is None:
        workload, meta = prepare(config, workload)
    else:
        check_script(script.path)
        check_resume(config)
        meta = None  # server 0 writes it: only the script builds the model
    run_dir = make_run_dir(config)
    (run_dir / "config.yaml").write_text(dump_config(config))
    if meta is not None:
        write_json(run_dir / "meta.json", meta)
    cluster = LocalCluster(config, workload, run_dir, script)
    failure: str | None = None
    try:
        cluster.start()
        failure = _watch(cluster, on_progress, poll_interval)
    except KeyboardInterrupt:
        failure = INTERRUPTED
    finally:
        killed = cluster.processes.stop()
        if cluster.throttle is not None:
            cluster.throttle.close()
        cluster.log.close()
        cluster.store = None  # type: ignore[assignment]  # closes the store's server socket
    return finish_run(run_dir, config, failure, killed, len(cluster.processes))


def _watch(cluster: LocalCluster, on_progress: ProgressCallback | None, poll_interval: float) -> str | None:
    """Follow the run until every process ended; return why it failed, or None."""
    config = cluster.config
    workers = {f"worker-{w}" for w in range(config.cluster.workers)}
    last_progress = 0.0
    while True:
        exited = cluster.processes.exited()
        for name, code in exited.items():
            if code == 0 or name in cluster.gone:
                continue
            if cluster.may_restart(name, code):
                cluster.restart(name, code)
                continue
            cluster.gone.add(name)
            if name in workers and config.on_worker_failure == "continue" and workers - cluster.gone:
                # servers cap the push quorum at the live workers, so the others go on without it
                rank = int(name.split("-")[1])
                cluster.tell_servers(Leave(rank, pid=cluster.processes.pid(name)))  # that process, not a restart
                cluster.prefixed.set(f"done/worker/{rank}", "failed")
                continue
            why = cluster.error_of(name)
            used = sum(cluster.restarts.values())
            spent = f", {used} restarts used of max_restarts={config.max_restarts}" if used else ""
            _, setting = cluster.failure_rule(name.split("-")[0])
            return (
                f"{name} stopped unexpectedly ({describe_exit(code)}{': ' + why if why else ''}); "
                f"stopping the run ({setting}{spent})"
            )
        if len(exited) == len(cluster.processes):
            return None
        now = time.monotonic()
        if on_progress is not None and now - last_progress > 1.0:
            last_progress = now
            try:
                on_progress(cluster.progress())
            except Exception:  # progress display must never break a run
                pass
        time.sleep(poll_interval)
