"""Python API: weaksync inside your own training loop (`connect`), or a whole job in one call (`train`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from torch import nn

from .config import Config, load_config
from .runtime.evaluator import MetricFn
from .runtime.launcher import ProgressCallback, RunResult, Script, resume_config, run_local
from .runtime.roles import current_role
from .runtime.script import MetricTarget
from .runtime.script import connect as _connect
from .runtime.worker import WorkerSession
from .training.workload import DataFn, LossFn, ModelFn, Workload


def connect(
    model: nn.Module,
    evaluate: MetricFn | None = None,
    *,
    metric: str | None = None,
    goal: Literal["max", "min"] = "max",
    target: float | None = None,
    config: Config | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> WorkerSession:
    """Join the run this process was started for, with `model` (call it once the model is built).

    In a script started by `weaksync run SCRIPT` or by torchrun, every process runs the same script and
    `connect` gives each its role:
    - on a worker it returns a session for your own loop: `while ps.wait(): forward, loss, backward;
      ps.push()`: `wait()` installs the fresh blocks, `push()` sends the model's gradients (after any
      clipping you did); the servers' optimizer steps;
    - on a server it serves the model's blocks, and on the evaluator it scores θ with
      `evaluate(model) -> number | {name: number}` every train.eval_interval; neither returns (the process
      ends with the run), so the training loop runs on workers only.
    `metric` names the figure of `evaluate` that time-to-target follows (`goal` "min" for a loss) and
    `target` its threshold; without them, train.metric / .goal / .target apply.
    `config`/`overrides` (or the WEAKSYNC_CONFIG variable) configure a torchrun launch; under `weaksync run`
    its flags are the configuration.
    """
    wanted = MetricTarget(metric, goal, target) if metric is not None else None
    return _connect(model, evaluate, wanted, config, overrides)


def role() -> str | None:
    """'server', 'worker' or 'evaluator' in a process of `weaksync run`, else None: lets a script skip
    loading training data where no training happens."""
    got = current_role()
    return got[0] if got else None


def run(
    script: str | Path,
    args: list[str] | None = None,
    config: Config | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
    resume: str | Path | None = None,
) -> RunResult:
    """`weaksync run SCRIPT ARGS...` from Python: the script in every role on the embedded cluster.

    `resume` (a stopped run's directory) continues that run from its servers' checkpoints in a new run
    directory: its configuration, with `overrides` on top (`config` is not read then). Workers go on from
    their step counts (`ps.step`), so a loop that keeps its own data position can go on from there too."""
    script_ = Script(str(Path(script).resolve()), tuple(args or ()))
    cfg = resume_config(Path(resume), overrides) if resume is not None else _config(config, overrides)
    return run_local(cfg, on_progress=on_progress, script=script_)


def _config(config: Config | str | Path | None, overrides: dict[str, Any] | None) -> Config:
    if isinstance(config, Config):
        return load_config(None, {**config.model_dump(), **(overrides or {})}) if overrides else config
    return load_config(config, overrides)


def train(
    model_fn: ModelFn | None = None,
    data_fn: DataFn | None = None,
    loss_fn: LossFn = F.cross_entropy,
    config: Config | str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Run one training job on the embedded cluster and return its run directory, summary and trained
    model (`result.state_dict()`). A thin user of `connect`: each worker runs the plain loop
    `loss_fn(model(x), y).backward()` on its shard.

    model_fn() -> nn.Module and data_fn() -> (train_dataset, test_dataset) are called in every process,
    so they must be picklable: module-level functions or functools.partial of them. Without them the
    config's built-in model and data are used. `overrides` take dotted keys: {"sync.mode": "partial"}.
    """
    if (model_fn is None) != (data_fn is None):
        raise ValueError("give both model_fn and data_fn, or neither (to use config.model / config.data)")
    cfg = _config(config, overrides)
    workload = None
    if model_fn is not None and data_fn is not None:
        workload = Workload(model_fn=model_fn, data_fn=data_fn, loss_fn=loss_fn)
        cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(update={"name": getattr(model_fn, "__name__", "custom")}),
                "data": cfg.data.model_copy(update={"name": getattr(data_fn, "__name__", "custom")}),
            }
        )
    return run_local(cfg, workload, on_progress=on_progress)
