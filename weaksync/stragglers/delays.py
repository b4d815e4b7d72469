"""Synthetic straggler delays: seeded delay models and the rules that say who gets them (DESIGN.md §3, §5).

Pure: nothing here sleeps, reads a clock or touches the network; the runtime asks a `Delayer` how many
seconds to add and does the waiting itself. The only I/O is reading a trace CSV when its sampler is built.

Seven delay models, each returning extra seconds >= 0 for one step:

  constant     (factor-1) × (base or measured) + seconds      "×factor slower", or a fixed extra
  shifted-exp  shift + Exp(mean)                               Dutta et al. 2018
  lognormal    median × exp(sigma × Z)                         heavy right tail (Chen et al. 2016)
  pareto       scale × U^(-1/alpha), minimum = scale           Dolly, NSDI'13
  spike        with probability p: seconds + (factor-1) × measured, else 0
  fail-slow    two-state Markov chain: slow episodes of mean `mean_steps` steps (Falcon, ATC'25)
  trace        a column of a CSV file, one row per step

Random models draw fresh values on every call; `fail-slow` and `trace` are functions of the step (a
call repeated for the same step sees the same state), so episodes do not depend on how often the
runtime asks.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

TARGETS = ("worker", "server", "link")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ConstantDelay(_Spec):
    """extra = (factor - 1) × (base if set, else the measured duration) + seconds."""

    kind: Literal["constant"] = "constant"
    factor: float = Field(1.0, ge=1, description="×factor slower than the measured duration (or than base)")
    seconds: float = Field(0.0, ge=0, description="fixed extra seconds")
    base: float | None = Field(None, gt=0, description="reference duration in seconds for factor (default: measured)")


class ShiftedExpDelay(_Spec):
    """extra = shift + Exp(mean) (Dutta et al. 2018, shifted exponential response times)."""

    kind: Literal["shifted-exp"] = "shifted-exp"
    shift: float = Field(0.0, ge=0, description="deterministic part, seconds")
    mean: float = Field(..., gt=0, description="mean of the exponential part, seconds")


class LogNormalDelay(_Spec):
    """extra = median × exp(sigma × Z), Z standard normal."""

    kind: Literal["lognormal"] = "lognormal"
    median: float = Field(..., gt=0, description="seconds")
    sigma: float = Field(..., ge=0, description="standard deviation of log(extra)")


class ParetoDelay(_Spec):
    """extra = scale × U^(-1/alpha), U uniform on (0, 1]: classical Pareto with minimum `scale`."""

    kind: Literal["pareto"] = "pareto"
    scale: float = Field(..., gt=0, description="minimum extra, seconds")
    alpha: float = Field(..., gt=0, description="tail index: smaller = heavier (mean is infinite for alpha <= 1)")


class SpikeDelay(_Spec):
    """With probability p per call: seconds + (factor - 1) × measured; otherwise 0."""

    kind: Literal["spike"] = "spike"
    p: float = Field(..., ge=0, le=1, description="probability of a spike per step")
    seconds: float = Field(0.0, ge=0, description="fixed extra seconds of a spike")
    factor: float = Field(1.0, ge=1, description="a spike makes the measured duration ×factor")


class FailSlowDelay(_Spec):
    """Transient fail-slow episodes (Falcon, ATC'25) as a two-state Markov chain over steps.

    A normal step is followed by a slow one with probability p_enter; a slow step ends its episode with
    probability 1/mean_steps, so episodes last Geometric(1/mean_steps) >= 1 steps (mean mean_steps) and
    the long-run slow fraction is p_enter·mean_steps / (1 + p_enter·mean_steps). While slow:
    extra = (factor - 1) × measured + seconds.
    """

    kind: Literal["fail-slow"] = "fail-slow"
    p_enter: float = Field(..., ge=0, le=1, description="probability per normal step of entering a slow episode")
    mean_steps: float = Field(..., ge=1, description="mean length of a slow episode in steps")
    factor: float = Field(1.0, ge=1, description="while slow, the measured duration is ×factor")
    seconds: float = Field(0.0, ge=0, description="while slow, fixed extra seconds")


class TraceDelay(_Spec):
    """Replay extra seconds from a CSV with a header: row s for step s, or the row whose `step` is s."""

    kind: Literal["trace"] = "trace"
    path: str = Field(..., min_length=1, description="CSV file with a header row")
    column: str = Field("delay", min_length=1, description="column of extra seconds")
    loop: bool = Field(True, description="wrap around at the end (False: 0 past the end)")


DelaySpec = Annotated[
    Union[ConstantDelay, ShiftedExpDelay, LogNormalDelay, ParetoDelay, SpikeDelay, FailSlowDelay, TraceDelay],
    Field(discriminator="kind"),
]
MODELS: dict[str, type[_Spec]] = {
    m.model_fields["kind"].default: m
    for m in (ConstantDelay, ShiftedExpDelay, LogNormalDelay, ParetoDelay, SpikeDelay, FailSlowDelay, TraceDelay)
}
KINDS = tuple(MODELS)


# ----------------------------------------------------------------------------------------------- samplers


class Sampler(Protocol):
    def sample(self, step: int, measured: float = 0.0) -> float:
        """Extra seconds (>= 0) for this step; `measured` is the duration the delay is relative to."""
        ...


SeedLike = Union[int, np.random.SeedSequence]


def _seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    seed = int(seed)
    return np.random.SeedSequence([abs(seed), int(seed < 0)])  # negative seeds are valid and distinct


def _measured(measured: float) -> float:
    return measured if measured > 0 else 0.0  # a clock that stepped back must not shorten anything


class _Constant:
    def __init__(self, spec: ConstantDelay) -> None:
        self.spec = spec

    def sample(self, step: int, measured: float = 0.0) -> float:
        s = self.spec
        ref = s.base if s.base is not None else _measured(measured)
        return (s.factor - 1.0) * ref + s.seconds


class _ShiftedExp:
    def __init__(self, spec: ShiftedExpDelay, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng

    def sample(self, step: int, measured: float = 0.0) -> float:
        return self.spec.shift + float(self.rng.exponential(self.spec.mean))


class _LogNormal:
    def __init__(self, spec: LogNormalDelay, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng

    def sample(self, step: int, measured: float = 0.0) -> float:
        return self.spec.median * math.exp(self.spec.sigma * float(self.rng.standard_normal()))


class _Pareto:
    def __init__(self, spec: ParetoDelay, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng

    def sample(self, step: int, measured: float = 0.0) -> float:
        u = 1.0 - float(self.rng.random())  # (0, 1]
        value = self.spec.scale * u ** (-1.0 / self.spec.alpha)
        return min(value, 1e9)  # alpha << 1 can overflow; a billion seconds is already "never"


class _Spike:
    def __init__(self, spec: SpikeDelay, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng

    def sample(self, step: int, measured: float = 0.0) -> float:
        s = self.spec
        if float(self.rng.random()) < s.p:  # one draw per call, whatever `measured` is
            return s.seconds + (s.factor - 1.0) * _measured(measured)
        return 0.0


class _FailSlow:
    """The chain's state is a function of the step: it advances once per step, whatever the call pattern."""

    def __init__(self, spec: FailSlowDelay, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng
        self.exit = 1.0 / spec.mean_steps
        self.step = -1  # the chain starts normal "before step 0"
        self.slow = False

    def _advance(self, step: int) -> None:
        n = step - self.step
        if n <= 0:
            return  # same step (or an earlier one): the current state stands
        while n > 0:  # in chunks, so a late first call (start_step = 10**6) stays small in memory
            chunk = min(n, 1 << 16)
            for u in self.rng.random(chunk).tolist():
                self.slow = (u >= self.exit) if self.slow else (u < self.spec.p_enter)
            n -= chunk
        self.step = step

    def sample(self, step: int, measured: float = 0.0) -> float:
        self._advance(step)
        if not self.slow:
            return 0.0
        return (self.spec.factor - 1.0) * _measured(measured) + self.spec.seconds


class _Trace:
    def __init__(self, spec: TraceDelay) -> None:
        self.spec = spec
        self.values, self.period = _read_trace(spec)

    def sample(self, step: int, measured: float = 0.0) -> float:
        if step < 0 or self.period == 0:
            return 0.0
        if step >= self.period:
            if not self.spec.loop:
                return 0.0
            step %= self.period
        return self.values.get(step, 0.0)


def _read_trace(spec: TraceDelay) -> tuple[dict[int, float], int]:
    """{step: seconds} and the period (rows, or max step + 1 with a `step` column)."""
    p = Path(spec.path)
    fix = f"set column to one of the header's names or fix the file '{p}'"
    if not p.is_file():
        raise ValueError(f"trace file '{p}' does not exist: pass the path of a CSV file with a header row")
    try:
        with p.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"trace file '{p}' cannot be read ({exc}): pass a readable CSV file") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]  # blank lines are not steps
    if not rows:
        raise ValueError(f"trace file '{p}' is empty: it needs a header row naming column '{spec.column}'")
    header = [h.strip() for h in rows[0]]
    if spec.column not in header:
        raise ValueError(f"trace file '{p}' has no column '{spec.column}' (header: {', '.join(header)}): {fix}")
    if len(rows) == 1:
        raise ValueError(f"trace file '{p}' has a header but no rows: add one row of seconds per step")
    col = header.index(spec.column)
    step_col = header.index("step") if "step" in header and spec.column != "step" else None

    def cell(row: list[str], i: int, line: int, name: str) -> str:
        if i >= len(row):
            raise ValueError(f"trace file '{p}' line {line} has no '{name}' value: give every row every column")
        return row[i].strip()

    values: dict[int, float] = {}
    for n, row in enumerate(rows[1:]):
        line = n + 2  # 1-based, after the header (blank lines aside)
        raw = cell(row, col, line, spec.column)
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"trace file '{p}' line {line}: {spec.column}='{raw}' is not a number of seconds >= 0: fix that row"
            )
        if step_col is None:
            values[n] = value
            continue
        raw_step = cell(row, step_col, line, "step")
        try:
            step = int(raw_step)
        except ValueError:
            step = -1
        if step < 0:
            raise ValueError(f"trace file '{p}' line {line}: step='{raw_step}' is not an integer >= 0: fix that row")
        if step in values:
            raise ValueError(f"trace file '{p}' line {line}: step {step} appears twice: keep one row per step")
        values[step] = value
    period = len(values) if step_col is None else max(values) + 1
    return values, period


def make_sampler(spec: DelaySpec, seed: SeedLike) -> Sampler:
    """A sampler for one delay model, drawing from its own numpy Generator: same seed, same sequence."""
    rng = np.random.default_rng(_seed_sequence(seed))
    if isinstance(spec, ConstantDelay):
        return _Constant(spec)
    if isinstance(spec, ShiftedExpDelay):
        return _ShiftedExp(spec, rng)
    if isinstance(spec, LogNormalDelay):
        return _LogNormal(spec, rng)
    if isinstance(spec, ParetoDelay):
        return _Pareto(spec, rng)
    if isinstance(spec, SpikeDelay):
        return _Spike(spec, rng)
    if isinstance(spec, FailSlowDelay):
        return _FailSlow(spec, rng)
    if isinstance(spec, TraceDelay):
        return _Trace(spec)
    raise TypeError(f"not a delay spec: {spec!r}")


# ----------------------------------------------------------------------------------------------- rules


def _one_id(value: Any) -> Any:
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value  # `ids: 1` means [1]


Ids = Annotated[Union[list[Annotated[int, Field(ge=0)]], Literal["all"]], BeforeValidator(_one_id)]


class StragglerRule(BaseModel):
    """Who is slowed (target and ids), how (delay and/or link bandwidth), and when (steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    target: Literal["worker", "server", "link"] = Field(
        ..., description="worker: compute; server: its replies; link: messages between a worker and a server"
    )
    ids: Ids = Field("all", description="worker ids (target worker or link) or server ids (target server)")
    servers: Ids = Field("all", description="link only: the server end(s) of the link")
    delay: DelaySpec | None = None
    bandwidth: float | None = Field(None, gt=0, description="link only, bytes/s: adds nbytes / bandwidth")
    start_step: int = Field(0, ge=0, description="first step the rule applies to")
    end_step: int | None = Field(None, description="first step it no longer applies to (default: never ends)")
    start_s: float = Field(
        0.0, ge=0, description="seconds into the run it starts: since a worker's first step, a server's first push"
    )
    end_s: float | None = Field(None, description="seconds into the run it ends (default: never)")

    @model_validator(mode="after")
    def _consistent(self) -> StragglerRule:
        if self.delay is None and self.bandwidth is None:
            raise ValueError(
                "a rule needs a delay or a bandwidth: add delay: {kind: constant, seconds: 0.01} or similar"
            )
        if self.bandwidth is not None and self.target != "link":
            raise ValueError(
                f"bandwidth applies to links only: set target: link or remove it (target is {self.target})"
            )
        if self.servers != "all" and self.target != "link":
            raise ValueError(
                f"servers names the server end of a link: set target: link, or use ids for target {self.target}"
            )
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ValueError(f"end_step={self.end_step} must exceed start_step={self.start_step} (or be omitted)")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s={self.end_s} must exceed start_s={self.start_s} (or be omitted)")
        for name in ("ids", "servers"):
            if getattr(self, name) == []:
                raise ValueError(f"{name} is empty: list at least one id or use 'all'")
        return self

    def matches(self, target: str, rid: int, peer: int | None = None) -> bool:
        """Whether this rule applies to `target` number `rid` (and, for links, server `peer`)."""
        if self.target != target or (self.ids != "all" and rid not in self.ids):
            return False
        if target == "link" and self.servers != "all":
            return peer is not None and peer in self.servers
        return True

    def active_at(self, step: int, elapsed: float = 0.0) -> bool:
        """Inside both windows: steps [start_step, end_step) and seconds [start_s, end_s) into the run."""
        in_steps = self.start_step <= step and (self.end_step is None or step < self.end_step)
        return in_steps and self.start_s <= elapsed and (self.end_s is None or elapsed < self.end_s)


class Delayer:
    """The delays for one target instance: the sum over its rules active at a step."""

    def __init__(self, parts: Sequence[tuple[StragglerRule, Sampler | None]] = ()) -> None:
        self.parts = list(parts)

    @property
    def active(self) -> bool:
        """False when no rule applies at all: the runtime can skip timing and sampling."""
        return bool(self.parts)

    def sample(self, step: int, measured: float = 0.0, nbytes: int = 0, elapsed: float = 0.0) -> float:
        """Extra seconds at `step`, `elapsed` seconds into the run (the caller's clock: this module reads none)."""
        total = 0.0
        for rule, sampler in self.parts:
            if not rule.active_at(step, elapsed):
                continue
            if sampler is not None:
                total += sampler.sample(step, measured)
            if rule.bandwidth is not None and nbytes > 0:
                total += nbytes / rule.bandwidth
        return total if total > 0 else 0.0

    def __repr__(self) -> str:
        return f"Delayer({len(self.parts)} rule{'s' if len(self.parts) != 1 else ''})"


def delayer_for(rules: Sequence[StragglerRule], target: str, rid: int, seed: int, peer: int | None = None) -> Delayer:
    """The rules that apply to `target` number `rid` (for links: worker `rid`, server `peer`).

    Each matching rule gets its own sampler, seeded from (seed, target, rid, peer, rule index) through
    numpy's SeedSequence: reproducible run to run and independent across processes, links and rules.
    A link delayer without a peer only picks up rules with servers: all.
    """
    if target not in TARGETS:
        raise ValueError(f"target '{target}' is not one of {', '.join(TARGETS)}")
    if rid < 0 or (peer is not None and peer < 0):
        raise ValueError(f"ids are >= 0 (rid={rid}, peer={peer})")
    root = _seed_sequence(seed)
    parts: list[tuple[StragglerRule, Sampler | None]] = []
    for index, rule in enumerate(rules):
        if not rule.matches(target, rid, peer):
            continue
        key = (TARGETS.index(target), rid, 0 if peer is None else peer + 1, index)
        child = np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, *key))
        parts.append((rule, None if rule.delay is None else make_sampler(rule.delay, child)))
    return Delayer(parts)
