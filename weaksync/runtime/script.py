"""A user's own script as every role of a run: `weaksync.connect(model)` makes this process what its role
says (a server serving the model's blocks, the evaluator scoring it, a worker handing back a session).

Servers and the evaluator never return from `connect`: their whole life is the protocol, and the script's
training loop must not run there. A worker gets a `WorkerSession` for its own loop.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from torch import nn

from ..config import Config, ConfigError
from ..records.files import write_json
from ..training.workload import seed_model_init
from .evaluator import MetricFn, serve_evaluator
from .roles import ENV_ROLE, LAUNCHED, role_environment, spec_from_environment
from .server import serve_server
from .spec import RoleError, RoleSpec, run_meta
from .worker import WorkerSession, open_session


@dataclass(frozen=True)
class MetricTarget:
    """Which figure of `evaluate` time-to-target follows, whether larger or smaller is better, and the
    threshold (weaksync.connect's `metric`, `goal`, `target`)."""

    metric: str
    goal: Literal["max", "min"] = "max"
    target: float | None = None

    def apply(self, config: Config) -> Config:
        if self.goal not in ("max", "min"):
            raise ConfigError(f"goal={self.goal!r}: use 'max' (larger is better) or 'min' (a loss)")
        train = config.train.model_copy(update={"metric": self.metric, "goal": self.goal, "target": self.target})
        return config.model_copy(update={"train": train})


_sessions: list[WorkerSession] = []  # this process's worker session, closed when the script ends
_connected: list[str] = []  # the role connect() served


def connect(
    model: nn.Module,
    evaluate: MetricFn | None = None,
    target: MetricTarget | None = None,
    config: Config | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> WorkerSession:
    """Join the run this process was started for, in the role it was given (see weaksync.connect)."""
    if _connected:
        raise RoleError("weaksync.connect was called twice in one process: call it once, after building the model")
    spec = spec_from_environment(config, overrides)
    if target is not None:  # the script's metric wins: the evaluator records it for the summary
        spec = replace(spec, config=target.apply(spec.config))
    _connected.append(spec.role)
    if spec.role == "server":
        from .flat import model_layout

        if spec.rank == 0 and not (spec.path / "meta.json").exists():
            layout = model_layout(model, spec.config.cluster.servers, spec.config.cluster.blocks)
            script = {"script": str(Path(sys.argv[0]).resolve()), "script_args": sys.argv[1:]}  # what --resume reruns
            write_json(spec.path / "meta.json", {**run_meta(spec.config, layout), **script})
        finished = serve_server(spec, model)
        if ENV_ROLE not in os.environ and spec.rank == 0:  # torchrun: server 0 summarises the run
            from .torchrun import write_summary

            write_summary(spec.path, spec.config, wait=finished)
        raise SystemExit(0 if finished else 130)
    if spec.role == "evaluator":
        serve_evaluator(spec, model, evaluate)
        raise SystemExit(0)
    session = open_session(spec, model)
    _sessions.append(session)
    atexit.register(session.close)  # torchrun: the process ends with the script; close says goodbye first
    return session


def run_script(spec: RoleSpec) -> None:
    """Entry of one process of `weaksync run SCRIPT`: the script itself, in this role, as `__main__`."""
    assert spec.script is not None
    LAUNCHED.append(spec)
    os.environ.update(role_environment(spec))
    sys.argv = [spec.script, *spec.argv]
    sys.path.insert(0, str(Path(spec.script).resolve().parent))
    seed_model_init(spec.config.run.seed)  # the same script builds the same model (and frozen parts) everywhere
    status = "failed"
    try:
        runpy.run_path(spec.script, run_name="__main__")
        status = "done"
    except SystemExit as exc:
        if exc.code == 130:
            status = "interrupted"
            raise KeyboardInterrupt from None
        if exc.code not in (None, 0):
            raise RoleError(f"{spec.script} exited with status {exc.code} on {spec.name}") from None
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        for session in _sessions:
            session.close(status)
    if not _connected:
        raise RoleError(
            f"{spec.script} ended without calling weaksync.connect(model) on {spec.name}: "
            "call it once the model is built, in every process"
        )
