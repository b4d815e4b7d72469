"""Run configuration: one validated tree, loaded from YAML and overridden by CLI flags.

Everything is checked before a process starts; errors are one line naming the field and the fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .core.policy import DEFAULT_GRACE, DEFAULT_SYNC_WARMUP, MODES, SyncPolicy, make_policy, resolve_count
from .errors import WeaksyncError
from .stragglers.cgroup import parse_throttle
from .stragglers.delays import StragglerRule
from .stragglers.scenarios import describe_error, load_scenario

Count = Union[int, float]


class ConfigError(WeaksyncError, ValueError):
    """A configuration problem, phrased as `field: problem (fix)`."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    name: str | None = Field(None, description="run directory name (default: <time>-<mode>)")
    out_dir: str = Field("runs", description="parent folder of run directories")
    seed: int = 0
    resume: str | None = Field(None, description="a stopped run's directory: servers restore its checkpoints")


class CheckpointSection(_Section):
    interval: float | None = Field(
        60.0, gt=0, description="seconds between server checkpoints (θ, optimizer, versions, worker steps); null: none"
    )


class SecuritySection(_Section):
    curve: bool = Field(
        True, description="CURVE on every data-plane socket: encrypted, and each peer only the role its key names"
    )
    keys: str | None = Field(
        None, description="folder `weaksync keys` wrote (torchrun, several hosts); embedded runs make their own"
    )


class ClusterSection(_Section):
    workers: int = Field(4, ge=1, le=1024)
    servers: int = Field(2, ge=1, le=256)
    blocks: int | None = Field(None, ge=1, description="parameter blocks B (default: >= 2 per server, ~4 MiB each)")
    host: str = Field("127.0.0.1", description="address servers bind to and advertise (embedded: loopback)")
    coalesce: bool = Field(
        True,
        description="one push, pull and reply message per server carrying all its blocks (false: one per block)",
    )


class SyncSection(_Section):
    mode: Literal["auto", "bsp", "backup", "partial-pull", "partial", "ssp", "async"] = "auto"
    k: Count | None = Field(None, description="push quorum: count or fraction of workers (auto: its lowest)")
    b: Count | None = Field(None, description="pull quorum: count or fraction of blocks (auto: its lowest)")
    tau: int | None = Field(None, ge=0, description="staleness bound (auto: its value at the start; it follows k)")
    backups: int = Field(1, ge=0, description="c in k = N - c for backup/partial")
    pull_fraction: float = Field(0.5, gt=0, le=1, description="ρ in b = ceil(ρB) for partial-pull/partial")
    push_deadline: float | None = Field(None, gt=0, description="seconds; update with >= 1 contribution after it")
    pull_deadline: float | None = Field(None, gt=0, description="seconds; compute with >= 1 fresh block after it")
    ssp_slack: int = Field(3, ge=0, description="SSP: max steps ahead of the slowest worker")
    weighting: Literal["none", "inverse"] = "none"
    fold_repeats: bool = Field(
        True,
        description="a worker's second push to a round it already contributed to is added to its contribution, "
        "so no gradient is computed for nothing (false: such pushes are dropped as duplicates)",
    )
    grace: float | None = Field(
        DEFAULT_GRACE,
        gt=0,
        le=1,
        description="backup/partial-pull/partial (and auto's workers): once k gradients (b blocks) are in, wait up to "
        "this fraction of a round (of a step's compute) for the rest, while they usually come that soon; null: close "
        "at exactly k and b",
    )
    sync_warmup: float = Field(
        DEFAULT_SYNC_WARMUP,
        ge=0,
        lt=1,
        description="ssp/async: this fraction of the run's steps is trained synchronously (as bsp) before the "
        "mode's own rules apply; 0: from the first step. Other modes ignore it (so a bench can set it for all)",
    )


class ModelSection(_Section):
    name: str = "digits-cnn"


class DataSection(_Section):
    name: str = "digits"
    dir: str | None = Field(None, description="folder of cifar10 / imagefolder data")
    synthetic_size: int = Field(5000, ge=10)


class TrainSection(_Section):
    batch_size: int = Field(32, ge=1, description="per worker")
    steps: int = Field(
        300, ge=1, description="steps per worker on average: the run ends after workers × steps steps in total"
    )
    eval_interval: float = Field(1.0, gt=0, description="seconds between accuracy snapshots")
    eval_live: bool = Field(
        True,
        description="evaluate snapshots while training runs (live accuracy); false: evaluate them once training "
        "is done, as the DDP baseline does, so that evaluation takes no CPU from training (benchmarks)",
    )
    target_accuracy: float = Field(0.95, gt=0, le=1, description="for time-to-accuracy")
    metric: str = Field(
        "accuracy", min_length=1, description="the evaluated figure time-to-target follows (a script's own: its name)"
    )
    goal: Literal["max", "min"] = Field(
        "max", description="whether a larger (accuracy) or smaller (loss) metric is better"
    )
    target: float | None = Field(
        None, description="time-to-target threshold on train.metric (default: target_accuracy when it is accuracy)"
    )
    threads: int = Field(1, ge=1, description="torch threads per process")


class OptimSection(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    lr_scaling: Literal["auto", "quorum", "linear", "none"] = Field(
        "auto",
        description="LR of an update that averaged m gradients: quorum = lr × m/k, linear = lr × m/N "
        "(Goyal et al. 2017), none = lr; auto = quorum when k > 1, linear when k = 1 (ssp, async)",
    )
    momentum_correction: bool = Field(
        True,
        description="SGD momentum lowered to 1 - (1 - momentum)(1 + s) while accepted gradients are s versions old "
        "on average, since staleness acts as momentum of its own (Mitliagkas et al. 2016); no effect without staleness",
    )
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(100, ge=1, description="'step' schedule: steps between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="'step' schedule: decay factor")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimSection:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optim.name=sgd and momentum > 0")
        return self


class TimeoutSection(_Section):
    """Explicit timeouts, shortest first: deadlines < heartbeat < connect/store < shutdown grace."""

    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between worker heartbeats")
    heartbeat: float = Field(30.0, gt=0, description="a worker silent this long is declared gone")
    connect: float = Field(60.0, gt=0, description="waiting for the store, endpoints and registration")
    progress: float = Field(120.0, gt=0, description="a worker waiting this long for any fresh block fails the run")
    shutdown: float = Field(10.0, gt=0, description="grace for processes to stop before they are killed")

    @model_validator(mode="after")
    def _ordered(self) -> TimeoutSection:
        if self.heartbeat <= 2 * self.heartbeat_interval:
            raise ValueError("heartbeat must exceed 2 × heartbeat_interval, or live workers are declared gone")
        if self.progress <= self.heartbeat:
            raise ValueError("progress must exceed heartbeat, so a departed worker is dropped before peers give up")
        return self


class Config(_Section):
    run: RunSection = Field(default_factory=RunSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    timeouts: TimeoutSection = Field(default_factory=TimeoutSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    scenario: str | None = Field(None, description="a shipped straggler scenario name or a YAML path")
    stragglers: list[StragglerRule] = Field(default_factory=list, description="synthetic delay rules")
    throttle: dict[str, float] = Field(
        default_factory=dict, description="real CPU limits via cgroups: {worker-1: 0.25} = a quarter of one CPU"
    )
    on_worker_failure: Literal["stop", "continue", "restart"] = Field(
        "stop",
        description="stop the run, continue with the live workers when >= k remain, or restart the worker "
        "(it rejoins with the current blocks at the slowest live clock)",
    )
    on_server_failure: Literal["stop", "restart"] = Field(
        "restart",
        description="stop the run, or restart the server from its last checkpoint (loses at most one "
        "checkpoint.interval of its updates)",
    )
    max_restarts: int = Field(
        10, ge=0, description="process restarts a run allows, all roles together, before a failure stops it"
    )

    def metric_target(self) -> float | None:
        """The threshold time-to-target is measured at (None: no target for this metric)."""
        t = self.train
        return t.target if t.target is not None else (t.target_accuracy if t.metric == "accuracy" else None)

    def policy(self, num_blocks: int) -> SyncPolicy:
        """The resolved thresholds once B is known; raises ConfigError on k > N, b > B, ..."""
        s = self.sync
        try:
            return make_policy(
                s.mode,
                self.cluster.workers,
                num_blocks,
                k=s.k,
                b=s.b,
                tau=s.tau,
                backups=s.backups,
                pull_fraction=s.pull_fraction,
                push_deadline=s.push_deadline,
                pull_deadline=s.pull_deadline,
                ssp_slack=s.ssp_slack,
                weighting=s.weighting,
                fold_repeats=s.fold_repeats,
                grace=s.grace,
                sync_warmup=math.ceil(s.sync_warmup * self.train.steps),
            )
        except ValueError as exc:
            raise ConfigError(f"sync.{exc}") from None

    def all_stragglers(self) -> list[StragglerRule]:
        """The scenario's rules followed by the config's own."""
        if self.scenario is None:
            return list(self.stragglers)
        return load_scenario(self.scenario).stragglers + list(self.stragglers)

    def check(self) -> Config:
        """Cross-field checks that need no model: counts against workers and servers."""
        c, s = self.cluster, self.sync
        try:
            rules = self.all_stragglers()
        except ValueError as exc:
            raise ConfigError(f"scenario: {exc}") from None
        for i, rule in enumerate(rules):
            ids, limit = rule.ids, c.servers if rule.target == "server" else c.workers
            if ids != "all" and any(not 0 <= x < limit for x in ids):
                raise ConfigError(f"stragglers[{i}].ids={ids}: {rule.target} ids must be in 0..{limit - 1}")
            if rule.servers != "all" and any(not 0 <= x < c.servers for x in rule.servers):
                raise ConfigError(f"stragglers[{i}].servers={rule.servers}: server ids must be in 0..{c.servers - 1}")
        for name, fraction in self.throttle.items():
            try:
                parse_throttle(f"{name}={fraction}")
            except ValueError as exc:
                raise ConfigError(f"throttle: {exc}") from None
            role, _, rid = name.partition("-")
            if int(rid) >= (c.workers if role == "worker" else c.servers):
                raise ConfigError(f"throttle: no {name} in a run of {c.workers} workers and {c.servers} servers")
        if self.on_server_failure == "restart" and self.checkpoint.interval is None:
            raise ConfigError(
                "on_server_failure=restart needs checkpoint.interval (a restarted server goes on from its last "
                "checkpoint): set checkpoint.interval, or on_server_failure=stop"
            )
        if c.blocks is not None and c.blocks < c.servers:
            raise ConfigError(
                f"cluster.blocks={c.blocks} is below cluster.servers={c.servers}: every server needs a block"
            )
        if isinstance(s.k, int) and s.k > c.workers:
            raise ConfigError(f"sync.k={s.k} exceeds cluster.workers={c.workers}: use k <= workers or a fraction")
        for name, value, total in (("k", s.k, c.workers), ("b", s.b, c.blocks or 1)):
            if isinstance(value, float) or name == "k" and value is not None:
                try:
                    resolve_count(value, total, name)
                except ValueError as exc:
                    raise ConfigError(f"sync.{exc}") from None
        if s.mode in ("backup", "partial") and s.k is None and s.backups >= c.workers:
            raise ConfigError(
                f"sync.backups={s.backups} leaves no worker to wait for: use backups < workers={c.workers}"
            )
        if c.blocks is not None:
            self.policy(c.blocks)
        return self


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML (optional) and apply dotted overrides like {"sync.mode": "bsp"}; validate everything."""
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist: pass the path of a YAML file")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file '{p}'{where} is not valid YAML: fix its syntax") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections (run, cluster, sync, ...)")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Config.model_validate(doc).check()
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def parse_set_pairs(pairs: list[str]) -> dict[str, Any]:
    """`--set section.field=value` flags as dotted overrides, each value read as YAML (numbers, lists, null)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{pair}': write it as section.field=value, e.g. --set optim.lr=0.1")
        out[key] = yaml.safe_load(raw)
    return out


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    if err["loc"] and err["loc"][0] == "stragglers":  # the rules' own formatter knows their unions
        return describe_error(exc)
    where = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in err["loc"][:-1])
        fields = _fields_of(section)
        return f"{where}: unknown field: use one of {', '.join(fields)}" if fields else f"{where}: unknown field"
    if err["type"] == "literal_error":
        return f"{where}: {msg}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {msg}{more}"


def _fields_of(section: str) -> list[str]:
    model: type[BaseModel] = Config
    for part in filter(None, section.split(".")):
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


assert set(MODES) == set(SyncSection.model_fields["mode"].annotation.__args__)  # one list of modes
