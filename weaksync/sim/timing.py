"""The simulator's time model: what a step's compute, a message and a byte cost, with no tensors and no sockets.

Every figure is a parameter, so a model can be set by hand (`weaksync simulate --set ...`), or read off a real
run (`calibrate.py`). Hosts have one NIC each, full duplex: a message leaves its sender's NIC at the sender's
bandwidth, crosses the link's latency, and enters its receiver's NIC at the receiver's bandwidth, behind what
entered before it, so many workers sending to one server at once queue there (incast, fan-in). Each host has
one CPU for messages: a message costs `message_cpu` plus `byte_cpu` per byte at its receiver, in arrival
order, before the protocol core sees it. A worker's own cost of sending a step (encoding, encrypting and
handing its pushes to ZeroMQ) sits between the end of its compute and its messages leaving, as in the runtime,
where the core's step (and `auto`'s measure of compute) ends before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class TimeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: float = Field(0.02, gt=0, description="seconds of one worker step's forward and backward")
    compute_cv: float = Field(
        0.1, ge=0, description="spread of compute around it (lognormal, coefficient of variation)"
    )
    latency: float = Field(50e-6, ge=0, description="one-way link latency, seconds")
    bandwidth: float = Field(1.25e9, gt=0, description="bytes per second of every NIC (10 Gbit/s)")
    message_cpu: float = Field(30e-6, ge=0, description="seconds a receiver spends on one message")
    byte_cpu: float = Field(0.25e-9, ge=0, description="seconds a receiver spends per byte (copy, check)")
    header_bytes: int = Field(64, ge=0, description="bytes of a message besides its payload")
    compute_samples: dict[int, list[float]] | None = Field(
        None, description="per worker, compute times to draw from (a real run's), instead of compute/compute_cv"
    )
    shared_cores: int | None = Field(
        None, ge=1, description="every process on one machine of this many cores: messages' CPU stretches with load"
    )
    send_samples: dict[int, list[float]] | None = Field(
        None, description="per worker, seconds from a step's end to its pushes sent (a real run's); None: at once"
    )


def _samples_of(per_worker: dict[int, list[float]] | None, worker: int) -> np.ndarray | None:
    """This worker's samples, or another worker's where it has none (a worker of the run that logged no step)."""
    samples: Sequence[float] | None = None
    if per_worker:
        samples = per_worker.get(worker) or next(iter(per_worker.values()))
    return np.asarray(samples) if samples else None


class ComputeClock:
    """One worker's step durations: drawn from a real run's samples, or lognormal around `compute`."""

    def __init__(self, model: TimeModel, worker: int, seed: int):
        self.rng = np.random.default_rng([seed, worker])
        self.samples = _samples_of(model.compute_samples, worker)
        sigma = float(np.sqrt(np.log1p(model.compute_cv**2)))
        self.mu, self.sigma = float(np.log(model.compute) - sigma**2 / 2), sigma  # mean = compute

    def draw(self) -> float:
        if self.samples is not None:
            return float(self.samples[self.rng.integers(len(self.samples))])
        return float(self.rng.lognormal(self.mu, self.sigma)) if self.sigma > 0 else float(np.exp(self.mu))


class SendClock:
    """One worker's cost of sending a step's messages: drawn from a real run's samples, or nothing."""

    def __init__(self, model: TimeModel, worker: int, seed: int):
        self.rng = np.random.default_rng([seed, worker, 1])  # a stream apart from the compute draws
        self.samples = _samples_of(model.send_samples, worker)

    def draw(self) -> float:
        return 0.0 if self.samples is None else float(self.samples[self.rng.integers(len(self.samples))])
