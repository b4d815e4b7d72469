"""torchrun entry: roles from ranks, endpoints through the launch's TCPStore, same processes as embedded.

One launch for everything (roles from the global rank: servers first, then workers):
    torchrun --standalone --nproc-per-node 6 -m weaksync.runtime.torchrun --config run.yaml
Two launches, so that a failed worker never restarts the servers (torchrun restarts a whole launch):
    torchrun ... -m weaksync.runtime.torchrun --role server --store HOST:PORT --run-id ID --config run.yaml
    torchrun ... -m weaksync.runtime.torchrun --role worker --store HOST:PORT --run-id ID --config run.yaml
Server 0 also runs the evaluator and writes summary.json when the run ends.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from torch.distributed import TCPStore

from ..config import Config, ConfigError, dump_config, load_config, parse_set_pairs
from ..records.files import write_json
from .spec import RoleSpec, elastic_restarts, keys_from_config
from .supervisor import Supervisor


def env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.isdigit():
        raise ConfigError(f"environment variable {name} is missing: start this module with torchrun")
    return int(value)


def assign_role(
    role: str, rank: int, world: int, config: Config, first_id: int | None = None, evaluator: bool = False
) -> tuple[str, int]:
    """(role, id within the role) for a global rank of this launch; `first_id` offsets the ids when one
    role is spread over several launches (e.g. one worker launch per host). With `evaluator` (a user's
    script) the launch has one more rank, the last, which evaluates."""
    servers, workers = config.cluster.servers, config.cluster.workers
    if role == "auto":
        if world != servers + workers + evaluator:
            needed = "cluster.servers + cluster.workers" + (" + 1 (the evaluator)" if evaluator else "")
            raise ConfigError(
                f"torchrun started {world} processes but {needed} = {servers + workers + evaluator}: "
                "set --nproc-per-node × --nnodes to that"
            )
        if rank >= servers + workers:
            return "evaluator", 0
        return ("server", rank) if rank < servers else ("worker", rank - servers)
    limit = servers if role == "server" else workers
    if first_id is None:
        if world == limit:
            return role, rank
        raise ConfigError(f"--role {role} launch has {world} processes but cluster.{role}s = {limit}: make them equal")
    if first_id + world > limit:
        raise ConfigError(
            f"--first-id {first_id} + {world} processes exceeds cluster.{role}s = {limit}: lower --first-id"
        )
    return role, first_id + rank


def store_address(store: str | None, role: str, rank: int, timeout: float) -> tuple[str, int, Any]:
    """Where the run meets: --store HOST:PORT (hosted by server 0) or the launch's own store."""
    if store:
        host, _, port = store.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--store '{store}' must be HOST:PORT")
        keep = None
        if role == "server" and rank == 0:
            keep = TCPStore(
                host if host not in ("localhost",) else "127.0.0.1",
                int(port),
                is_master=True,
                wait_for_workers=False,
                timeout=timedelta(seconds=timeout),
            )
        return host, int(port), keep
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), env_int("MASTER_PORT")
    keep = None
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and env_int("RANK") == 0:
        keep = TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout))
    return host, port, keep


def _evaluator_entry(spec: RoleSpec) -> None:
    from .evaluator import run_evaluator

    run_evaluator(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weaksync.runtime.torchrun", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help="YAML config (same as weaksync train)")
    parser.add_argument("--role", choices=("auto", "server", "worker"), default="auto")
    parser.add_argument("--store", help="HOST:PORT of the run's store when servers and workers are separate launches")
    parser.add_argument("--run-id", help="run directory name and store prefix (default: TORCHELASTIC_RUN_ID)")
    parser.add_argument(
        "--first-id",
        type=int,
        help="id of this launch's rank 0 within its role (default: the launch holds the whole role)",
    )
    parser.add_argument("--set", action="append", default=[], help="section.field=value")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, parse_set_pairs(args.set))
        rank, world = env_int("RANK"), env_int("WORLD_SIZE")
        if args.first_id is not None and args.role == "auto":
            raise ConfigError("--first-id needs --role server or --role worker")
        role, rid = assign_role(args.role, rank, world, config, args.first_id)
        keys = keys_from_config(config, role, rid)
        evaluator_keys = keys_from_config(config, "evaluator", 0) if role == "server" and rid == 0 else None
        host, port, keep_store = store_address(args.store, role, rid, config.timeouts.connect)
    except ConfigError as exc:
        print(f"weaksync: error: {exc}", file=sys.stderr)
        return 2
    from .launcher import prepare

    workload, meta = prepare(config, None)
    run_id = args.run_id or os.environ.get("TORCHELASTIC_RUN_ID") or "torchrun"
    run_dir = Path(config.run.out_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    restarts = elastic_restarts()  # a restarted launch: servers restore their checkpoints, workers resume
    spec = RoleSpec(
        role, rid, config, workload, host, port, run_id, str(run_dir), watch_pid=os.getppid(), keys=keys,
        restarts=restarts, store_round=restarts,
    )  # fmt: skip
    if role == "worker":
        from .worker import run_worker

        run_worker(spec)
        return 0
    from .server import run_server

    evaluator = Supervisor(grace=0.0)
    if rid == 0:
        (run_dir / "config.yaml").write_text(dump_config(config))
        write_json(run_dir / "meta.json", meta)
        eval_spec = RoleSpec(
            "evaluator",
            0,
            config,
            workload,
            host,
            port,
            run_id,
            str(run_dir),
            watch_pid=os.getpid(),
            keys=evaluator_keys,
            store_round=restarts,
        )
        evaluator.spawn("evaluator", mp.get_context("spawn"), _evaluator_entry, (eval_spec,))
    finished = False
    try:
        finished = run_server(spec)
    finally:
        evaluator.wait(config.timeouts.shutdown)  # it saves the final model after the servers stopped
        evaluator.stop()
    if rid == 0:
        write_summary(run_dir, config, wait=finished)  # interrupted: the others are gone, do not wait
    del keep_store
    return 0


def write_summary(run_dir: Path, config: Config, wait: bool = True) -> None:
    """Wait (bounded, when `wait`) for every process's figures, then summarise the run."""
    from ..report.summary import summarize_run

    expected = config.cluster.servers + config.cluster.workers
    deadline = time.monotonic() + (config.timeouts.shutdown if wait else 0.0)
    while len(list((run_dir / "procs").glob("*.json"))) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    summarize_run(run_dir, config)


if __name__ == "__main__":
    sys.exit(main())
