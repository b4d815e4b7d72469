"""Predict a real run: its config, its model's size and its workers' measured compute times, in the simulator.

What comes from the run: the mode, N, S, B and steps (config.yaml), θ's size (meta.json), each worker's
compute time per step as measured (step events, `t_end - t`, less the delay its straggler rule injected; the
simulator injects the rule's delays afresh), and its cost of sending a step's messages (`t_push - t_end`).
What does not: the cost of a message and of a byte, which the run does not measure apart from waiting. Those
come from the time model (defaults, `--set`), or with `fit_message_cost` from one run's p50 wait: fit on one
run, then predict the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, load_config
from ..records.eventlog import read_events
from .engine import Simulation, even_blocks
from .timing import TimeModel

FLOAT_BYTES = 4


@dataclass(frozen=True)
class RunToPredict:
    """What the simulator takes from a real run, read once (a fit simulates it many times)."""

    config: Config
    block_bytes: list[int]
    block_server: list[int]
    compute: dict[int, list[float]]
    send: dict[int, list[float]]
    measured: dict[str, Any]  # the run's own summary.json


def load_run(run_dir: Path) -> RunToPredict:
    for name in ("config.yaml", "meta.json", "summary.json"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"--calibrate: '{run_dir}' has no {name}: pass the directory of a finished run")
    meta = json.loads((run_dir / "meta.json").read_text())
    sizes, servers = even_blocks(meta["theta_size"] * FLOAT_BYTES, meta["num_blocks"], meta["num_servers"])
    measured = json.loads((run_dir / "summary.json").read_text())
    compute, send = step_samples(run_dir)
    return RunToPredict(load_config(run_dir / "config.yaml"), sizes, servers, compute, send, measured)


def step_samples(run_dir: Path) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Each worker's measured compute per step, without the delays its straggler rule injected, and its time
    from the end of that compute to its pushes sent (0 for a log without `t_push`)."""
    compute: dict[int, list[float]] = {}
    send: dict[int, list[float]] = {}
    for path in sorted((run_dir / "events").glob("worker-*.jsonl")):
        for e in read_events(path):
            if e["ev"] == "step":
                w = int(e["w"])
                compute.setdefault(w, []).append(max(1e-6, e["t_end"] - e["t"] - e.get("injected", 0.0)))
                send.setdefault(w, []).append(max(0.0, e.get("t_push", e["t_end"]) - e["t_end"]))
    if not compute:
        raise ConfigError(f"--calibrate: '{run_dir}' logged no worker step: pass a run that trained")
    return compute, send


def simulate_run(run: RunToPredict, model: TimeModel, seed: int = 0, coalesce: bool | None = None) -> dict[str, Any]:
    """The simulation's summary of `run`, its workers drawing their compute from the run's own (messages cut
    as the run cut them, unless `coalesce` says otherwise)."""
    model = model.model_copy(update={"compute_samples": run.compute, "send_samples": run.send})
    return Simulation(run.config, model, run.block_bytes, run.block_server, coalesce=coalesce, seed=seed).run()


def measured_wait(measured: dict[str, Any]) -> float | None:
    """The run's p50 wait for fresh blocks: the median over its workers' p50s."""
    waits = sorted(w["wait_time"]["p50"] for w in (measured.get("workers") or {}).values() if w.get("wait_time"))
    return waits[len(waits) // 2] if waits else None


def comparison(simulated: dict[str, Any], measured: dict[str, Any]) -> list[tuple[str, float | None, float | None]]:
    """(figure, simulated, measured) for what calibration is judged on."""

    def p(summary: dict[str, Any], key: str, q: str) -> float | None:
        return (summary.get(key) or {}).get(q)

    return [
        ("steps/s", simulated["steps_per_s"], measured.get("steps_per_s")),
        ("step time p50 (s)", p(simulated, "step_time", "p50"), p(measured, "step_time", "p50")),
        ("step time p95 (s)", p(simulated, "step_time", "p95"), p(measured, "step_time", "p95")),
        ("wait p50 (s)", p(simulated, "wait_time", "p50"), measured_wait(measured)),
        (
            "messages per step",
            simulated["traffic"]["msgs_per_step"],
            (measured.get("traffic") or {}).get("msgs_per_step"),
        ),
    ]


def fit_message_cost(run: RunToPredict, model: TimeModel, rounds: int = 12) -> TimeModel:
    """The per-message CPU cost (byte cost in proportion) at which the simulated p50 wait of this run equals the
    measured one: bisection on a log scale between 1 µs and 10 ms."""
    target = measured_wait(run.measured)
    if not target:
        raise ConfigError("--fit: the run has no measured wait to fit")
    low, high = 1e-6, 1e-2
    ratio = model.byte_cpu / model.message_cpu if model.message_cpu > 0 else 0.0
    for _ in range(rounds):
        mid = (low * high) ** 0.5
        trial = model.model_copy(update={"message_cpu": mid, "byte_cpu": ratio * mid})
        wait = simulate_run(run, trial)["wait_time"]["p50"] or 0.0
        low, high = (mid, high) if wait < target else (low, mid)
    best = (low * high) ** 0.5
    return model.model_copy(update={"message_cpu": best, "byte_cpu": ratio * best})
