"""Which role this process plays in a user's script, and where its run meets.

`weaksync run SCRIPT` starts the script once per role and hands each its role in the environment
(`WEAKSYNC_*`); under `torchrun` the role comes from the rank (servers first, then workers, the last
rank evaluates). `weaksync.connect` reads it here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, dump_config, load_config
from .spec import RoleSpec

ENV_ROLE, ENV_RANK, ENV_STORE = "WEAKSYNC_ROLE", "WEAKSYNC_RANK", "WEAKSYNC_STORE"
ENV_RUN_DIR, ENV_WATCH = "WEAKSYNC_RUN_DIR", "WEAKSYNC_WATCH_PID"
ENV_CONFIG = "WEAKSYNC_CONFIG"  # torchrun: a YAML config for a script that names none itself
ROLES = ("server", "worker", "evaluator")
_kept: list[Any] = []  # a torchrun rank 0's store must live as long as the process
LAUNCHED: list[RoleSpec] = []  # `weaksync run`: the spec this process was started with (its keys live only here)


def role_environment(spec: RoleSpec) -> dict[str, str]:
    """The variables `weaksync run` sets for one role of a script."""
    env = {
        ENV_ROLE: spec.role,
        ENV_RANK: str(spec.rank),
        ENV_STORE: f"{spec.store_host}:{spec.store_port}",
        ENV_RUN_DIR: spec.run_dir,
    }
    if spec.watch_pid is not None:
        env[ENV_WATCH] = str(spec.watch_pid)
    return env


def current_role() -> tuple[str, int] | None:
    """(role, id within the role) of a process of `weaksync run`, else None (under torchrun the role
    depends on the config's server and worker counts, known only inside `connect`)."""
    if ENV_ROLE in os.environ:
        return os.environ[ENV_ROLE], int(os.environ.get(ENV_RANK, "0"))
    return None


def spec_from_environment(config: Config | str | Path | None, overrides: dict[str, Any] | None) -> RoleSpec:
    """The RoleSpec of this script process: from `weaksync run`'s variables, else from torchrun's."""
    if ENV_ROLE in os.environ:
        return _embedded_spec()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _torchrun_spec(config, overrides)
    raise ConfigError(
        "weaksync.connect: this process has no role: start the script with `weaksync run SCRIPT` "
        "(embedded cluster) or with torchrun (one process per server, worker and the evaluator)"
    )


def _embedded_spec() -> RoleSpec:
    role, rank = os.environ[ENV_ROLE], int(os.environ.get(ENV_RANK, "0"))
    if role not in ROLES:
        raise ConfigError(f"{ENV_ROLE}={role!r}: must be one of {', '.join(ROLES)}")
    host, _, port = os.environ[ENV_STORE].rpartition(":")
    run_dir = Path(os.environ[ENV_RUN_DIR])
    config = load_config(run_dir / "config.yaml")
    watch = os.environ.get(ENV_WATCH)
    keys = LAUNCHED[0].keys if LAUNCHED else None
    if config.security.curve and keys is None:
        raise ConfigError(
            f"{ENV_ROLE} is set, but this process was not started by `weaksync run`, and the run's CURVE keys "
            "reach only the processes it starts: run the script with `weaksync run SCRIPT`"
        )
    return RoleSpec(
        role, rank, config, None, host, int(port), run_dir.name, str(run_dir), int(watch) if watch else None,
        keys=keys,
    )  # fmt: skip


def _torchrun_spec(config: Config | str | Path | None, overrides: dict[str, Any] | None) -> RoleSpec:
    from .spec import elastic_restarts, keys_from_config
    from .torchrun import assign_role, env_int, store_address

    if config is None:
        config = os.environ.get(ENV_CONFIG)
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    role, rid = assign_role("auto", env_int("RANK"), env_int("WORLD_SIZE"), cfg, evaluator=True)
    keys = keys_from_config(cfg, role, rid)
    host, port, keep = store_address(None, role, rid, cfg.timeouts.connect)
    if keep is not None:
        _kept.append(keep)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") or "torchrun"
    run_dir = Path(cfg.run.out_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    if role == "server" and rid == 0:
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    restarts = elastic_restarts()
    return RoleSpec(
        role, rid, cfg, None, host, port, run_id, str(run_dir), watch_pid=os.getppid(), keys=keys,
        restarts=restarts, store_round=restarts,
    )  # fmt: skip
