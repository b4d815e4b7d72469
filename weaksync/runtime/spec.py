"""What every process of a run is handed: its role, the config, the workload and where to meet."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from torch.distributed import PrefixStore, Store, TCPStore

from ..config import Config, ConfigError
from ..core.layout import BlockLayout
from ..errors import WeaksyncError
from ..training.workload import Workload
from ..transport.security import EVALUATOR, SERVER, KeysError, RoleKeys, load_role_keys, worker_principal

FINAL_MODEL = "final_model.pt"  # the model's state_dict at the end of the run (the evaluator writes it)


def checkpoint_file(run_dir: Path, server: int) -> Path:
    """Where server `server` of a run keeps its latest checkpoint."""
    return Path(run_dir) / "checkpoints" / f"server-{server}.pt"


class RoleError(WeaksyncError, RuntimeError):
    """A process cannot go on for a reason it can state in one line (refused, diverged, stalled);
    the launcher shows that line instead of a traceback."""


@dataclass
class RoleSpec:
    role: str  # "server" | "worker" | "evaluator"
    rank: int  # id within the role
    config: Config
    workload: Workload | None  # None: the process runs a user's script, which builds its own model
    store_host: str
    store_port: int
    run_id: str
    run_dir: str
    watch_pid: int | None = None  # exit if this process (the launcher) disappears
    script: str | None = None  # `weaksync run SCRIPT`: run it in this role
    argv: tuple[str, ...] = ()  # the script's own arguments
    keys: RoleKeys | None = None  # CURVE keys of this role (None: security.curve is off)
    restarts: int = 0  # earlier processes of this role in this run: a restarted server restores its checkpoint
    store_round: int = 0  # torchrun's restart round: every process of the launch is new, and meets afresh

    @property
    def name(self) -> str:
        return self.role if self.role == "evaluator" else f"{self.role}-{self.rank}"

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


def principal_of(role: str, rank: int) -> str:
    """The key a role's process holds: one for all servers, one per worker, one for the evaluator."""
    return SERVER if role == "server" else EVALUATOR if role == "evaluator" else worker_principal(rank)


def keys_from_config(config: Config, role: str, rank: int) -> RoleKeys | None:
    """A torchrun process's keys: from the folder `weaksync keys` wrote (security.keys); none when CURVE is off."""
    if not config.security.curve:
        return None
    if config.security.keys is None:
        raise ConfigError(
            "security.keys: a torchrun launch needs the run's keys (nothing safe carries them between "
            "processes): run `weaksync keys DIR --workers N` once and set security.keys=DIR, or set "
            "security.curve=false on a network you trust"
        )
    try:
        return load_role_keys(Path(config.security.keys), principal_of(role, rank))
    except KeysError as exc:
        raise ConfigError(str(exc)) from None


def store_prefix(run_id: str, store_round: int = 0) -> str:
    """Keys of a run (and round) in the store. A torchrun restart replaces every process of its launch, so the
    keys of the round before (endpoints, a worker's 'done') belong to processes that are gone."""
    return f"weaksync/{run_id}/" + (f"round-{store_round}/" if store_round else "")


def elastic_restarts() -> int:
    """How many times torchrun restarted this launch (--max-restarts): its servers restore their checkpoints."""
    value = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def connect_store(spec: RoleSpec) -> Store:
    """A client of the run's TCPStore, keys prefixed by the run id, with an explicit timeout."""
    timeout = timedelta(seconds=spec.config.timeouts.connect)
    store = TCPStore(spec.store_host, spec.store_port, is_master=False, timeout=timeout)
    return PrefixStore(store_prefix(spec.run_id, spec.store_round), store)


def store_set_json(store: Store, key: str, value: Any) -> None:
    store.set(key, json.dumps(value))


def watch_parent(pid: int | None, interval: float = 1.0) -> None:
    """Exit this process soon after `pid` is gone, so that a SIGKILLed launcher leaves no orphans."""
    if pid is None:
        return

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                os._exit(1)

    threading.Thread(target=loop, name="watch-parent", daemon=True).start()


def install_stop_handlers() -> None:
    """SIGTERM and SIGINT end the process through KeyboardInterrupt, so `finally` blocks close sockets
    and flush logs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_meta(config: Config, layout: BlockLayout) -> dict[str, Any]:
    """meta.json: what a run was, resolved (the mode's k, b, τ, the layout), for its summary and report."""
    policy = config.policy(layout.num_blocks)
    return {
        "mode": policy.mode,
        "num_workers": policy.num_workers,
        "num_servers": config.cluster.servers,
        "num_blocks": layout.num_blocks,
        "k": policy.k,
        "b": policy.b,
        "tau": policy.tau,
        "grace": policy.grace,
        "sync_warmup": policy.sync_warmup,
        "fold_repeats": policy.fold_repeats,
        "push_deadline": policy.push_deadline,
        "pull_deadline": policy.pull_deadline,
        "ssp_slack": policy.ssp_slack,
        "parameters": layout.num_params,
        "theta_size": layout.total,
        "layout_digest": layout.digest,
        "model": config.model.name,
        "data": config.data.name,
        "batch_size": config.train.batch_size,
        "steps_per_worker": config.train.steps,
    }
