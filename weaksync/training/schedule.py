"""Learning-rate schedule as a pure function of training progress (the workers' step).

torch's LRScheduler objects count optimizer steps; here each block steps at its own pace (and k < N or
async change how many updates a worker step causes), so the LR follows the workers' progress instead,
which keeps one schedule meaning the same thing in every mode.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    schedule: str,
    warmup_steps: int = 0,
    step_size: int = 100,
    gamma: float = 0.1,
) -> float:
    """LR for worker step `step` (0-based): linear warm-up, then constant, cosine to 0, or step decay."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * base_lr * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr * gamma ** ((step - warmup_steps) // step_size)
    raise ValueError(f"unknown schedule '{schedule}': choose constant, cosine or step")
