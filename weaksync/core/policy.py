"""Synchronization policy: the (k, b, τ, deadlines) tuple every mode is a preset of (DESIGN.md §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MODES = ("auto", "bsp", "backup", "partial-pull", "partial", "ssp", "async")
Weighting = Literal["none", "inverse"]
GRACE_MODES = ("backup", "partial-pull", "partial")  # ssp and async apply every gradient on arrival by design
DEFAULT_GRACE = 0.5
GRACE_HISTORY = 9  # rounds (server) or steps (worker) whose lateness decides whether waiting pays
WARMUP_MODES = ("ssp", "async")  # the modes whose staleness is inherent: they start synchronous
# fraction of a run's steps: ResNet-20 within 2.5 pt of bsp with it, 7-8 pt below without (docs/results.md)
DEFAULT_SYNC_WARMUP = 0.2


@dataclass(frozen=True)
class SyncPolicy:
    """Resolved, integer thresholds for one run.

    k: accepted contributions that trigger an update of a block.
    b: blocks refreshed since the last step before a worker computes again.
    tau: staleness bound (None = unbounded).
    push_deadline / pull_deadline: seconds after which a quorum of >= 1 suffices (None = wait for k / b).
    ssp_slack: with SSP, a worker's pulls are held while it is more than this many steps ahead of the
      slowest live worker (None = no clock bound).
    immediate_pull: servers answer a pull at once even with nothing new (async).
    wait_for_pull: workers wait for b refreshed blocks; False (async): only for the answers to their
      pulls, which servers send at once with whatever version they hold.
    weighting: "inverse" weights a contribution of staleness s by 1/(1+s); "none" averages plainly.
    fold_repeats: a push from a worker that already contributed to the block's open round (it stepped again
      before the block advanced) is added to its contribution, so the update averages every minibatch it
      holds. False: the original rule, such pushes are dropped as `duplicate`.
    auto: k and b are chosen online (core/auto.py): they start at N and B (bsp) and move within
      [k_min, N] and [b_min, B] when the measured arrival times say a smaller quorum makes more progress
      per second; τ follows k (`auto.staleness_bound`), and `tau` is its value at the start. Within a
      round the server also cuts it short once waiting for the next gradient stops paying
      (`ServerCore._cut_deadline`).
    grace: the quorums k and b are minimums. Once they are met, the server waits a little longer for the
      remaining live workers' gradients, and the worker for the remaining blocks, when these usually come
      that soon: at most `grace` × the typical round period (server) or compute time (worker). When nothing
      is slow the update then holds every gradient and the step every fresh block (as bsp); when something
      is, the late ones are not waited for (as k and b say). None: close at exactly k and b. Under auto only
      the workers wait it (once b < B); its servers' cut decides instead.
    sync_warmup: the first `sync_warmup` versions of every block are made as bsp makes them (k = every live
      worker, τ = 0, pulls answered only once the block advanced), then the mode's own rules apply
      (Sync-Switch, Li et al. ICDCS 2021); a pull deadline does not start a step meanwhile (WorkerCore).
      Stale gradients early in training, when gradients are large and change fast, cost ResNet-20 under
      ssp and async 7-8 pt of final accuracy; a 20 % warm-up 2-3 pt.
    """

    mode: str
    num_workers: int
    num_blocks: int
    k: int
    b: int
    tau: int | None
    push_deadline: float | None = None
    pull_deadline: float | None = None
    ssp_slack: int | None = None
    immediate_pull: bool = False
    wait_for_pull: bool = True
    weighting: Weighting = "none"
    fold_repeats: bool = True
    grace: float | None = None
    auto: bool = False
    k_min: int = 1
    b_min: int = 1
    sync_warmup: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.num_workers:
            raise ValueError(f"k={self.k} must be between 1 and the number of workers {self.num_workers}")
        if not 1 <= self.b <= self.num_blocks:
            raise ValueError(f"b={self.b} must be between 1 and the number of blocks {self.num_blocks}")
        if self.tau is not None and self.tau < 0:
            raise ValueError(f"tau={self.tau} must be >= 0 (or unbounded)")
        for name in ("push_deadline", "pull_deadline"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value} must be a positive number of seconds")
        if self.grace is not None and not 0 < self.grace <= 1:
            raise ValueError(f"grace={self.grace} must be a fraction of a step in (0, 1], or none")
        if self.auto and not (1 <= self.k_min <= self.num_workers and 1 <= self.b_min <= self.num_blocks):
            raise ValueError(f"auto bounds k_min={self.k_min}, b_min={self.b_min} must be within the counts")
        if self.auto and (self.tau is None or self.tau < 1):
            raise ValueError("auto needs tau >= 1: with b < B a gradient computed on a stale block must be accepted")
        if self.sync_warmup < 0:
            raise ValueError(f"sync_warmup={self.sync_warmup} must be >= 0 versions")
        if self.ssp_slack is not None and self.ssp_slack < 0:
            raise ValueError(f"ssp_slack={self.ssp_slack} must be >= 0")
        if self.ssp_slack is not None and self.k > 1:
            raise ValueError(
                f"k={self.k}: ssp applies every gradient on arrival (k = 1); use partial or backup for a quorum"
            )
        no_deadline = self.push_deadline is None and self.pull_deadline is None
        if self.b < self.num_blocks and self.tau == 0 and no_deadline:
            raise ValueError(
                f"tau=0 with b={self.b} < B={self.num_blocks} can deadlock (a gradient computed on a stale block "
                "is never accepted): use tau >= 1 or set a push/pull deadline"
            )


def within_staleness(tau: int | None, block_version: int, base_version: int) -> bool:
    """The staleness rule, for a bound that may change during a run (auto): v - u <= τ, or no bound."""
    return tau is None or block_version - base_version <= tau


def resolve_count(value: int | float, total: int, name: str) -> int:
    """k and b may be counts (int >= 1) or fractions of the total (0 < float <= 1, rounded up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a count (int) or a fraction (float), got {value!r}")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ValueError(f"{name}={value} as a fraction must be in (0, 1]: use an integer for a count")
        return max(1, math.ceil(value * total - 1e-9))
    if not 1 <= value <= total:
        raise ValueError(f"{name}={value} must be between 1 and {total}")
    return value


def make_policy(
    mode: str,
    num_workers: int,
    num_blocks: int,
    *,
    k: int | float | None = None,
    b: int | float | None = None,
    tau: int | None = None,
    backups: int = 1,
    pull_fraction: float = 0.5,
    push_deadline: float | None = None,
    pull_deadline: float | None = None,
    ssp_slack: int = 3,
    weighting: Weighting = "none",
    fold_repeats: bool = True,
    grace: float | None = DEFAULT_GRACE,
    sync_warmup: int = 0,
) -> SyncPolicy:
    """Expand a named mode into thresholds; explicit k / b / tau override the preset's. `sync_warmup` (versions
    made synchronously first) applies to ssp and async only: the other modes wait for their quorums anyway."""
    n, nb = num_workers, num_blocks
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}': choose one of {', '.join(MODES)}")
    backup_k = max(1, n - backups)
    pull_b = max(1, math.ceil(pull_fraction * nb - 1e-9))
    presets: dict[str, dict] = {
        "auto": dict(k=n, b=nb, tau=1, auto=True, k_min=1, b_min=1),
        "bsp": dict(k=n, b=nb, tau=0),
        "backup": dict(k=backup_k, b=nb, tau=0),
        "partial-pull": dict(k=n, b=pull_b, tau=1),
        "partial": dict(k=backup_k, b=pull_b, tau=1),
        "ssp": dict(k=1, b=nb, tau=None, ssp_slack=ssp_slack),
        "async": dict(k=1, b=nb, tau=None, immediate_pull=True, wait_for_pull=False),
    }
    preset = presets[mode]
    if mode == "auto":  # explicit k and b are the lowest quorums auto may choose
        if k is not None:
            preset["k_min"] = resolve_count(k, n, "k")
        if b is not None:
            preset["b_min"] = resolve_count(b, nb, "b")
        k = b = None
    if k is not None:
        preset["k"] = resolve_count(k, n, "k")
    if b is not None:
        preset["b"] = resolve_count(b, nb, "b")
    if tau is not None:
        preset["tau"] = tau
    partial_quorum = preset["k"] < n or preset["b"] < nb  # grace only where a quorum can close early
    # auto's quorums close early once it lowers them: its workers wait the grace as partial-pull's do (its
    # servers have the cut instead, ServerCore.grace)
    preset["grace"] = grace if (partial_quorum and mode in GRACE_MODES) or mode == "auto" else None
    return SyncPolicy(
        mode=mode,
        num_workers=n,
        num_blocks=nb,
        push_deadline=push_deadline,
        pull_deadline=pull_deadline,
        weighting=weighting,
        fold_repeats=fold_repeats,
        sync_warmup=sync_warmup if mode in WARMUP_MODES else 0,
        **preset,
    )
