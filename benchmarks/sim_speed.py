"""How fast the simulator runs at issue 14's scale (N = 1,000 workers, S = 16 servers, B = 256 blocks,
coalesced), and how much of that time is spent inside the protocol cores it drives.

    python benchmarks/sim_speed.py --steps 5 --modes bsp auto

For each mode, two runs of the same simulation: a plain one (its wall time is the speed), then one with a
timer around every call into `ServerCore` and `WorkerCore` (the calls a simulator cannot avoid: each
message is one call, as in the runtime). The second run's in-core seconds, less the timers' own cost
(measured on an empty call), are the floor of any simulator that drives these cores message by message:
what 1,000 steps would take even if everything around the cores cost nothing. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from weaksync.config import load_config
from weaksync.core.server import ServerCore
from weaksync.core.worker import WorkerCore
from weaksync.sim.engine import Simulation, even_blocks
from weaksync.sim.timing import TimeModel

MODEL_BYTES = 605_224
SERVER_CALLS = ("on_push_many", "on_pull_many", "on_timer", "next_deadline")
WORKER_CALLS = ("start", "on_blocks", "ready", "deadline", "begin_step", "end_step")


def simulation(mode: str, n: int, s: int, b: int, steps: int) -> Simulation:
    config = load_config(None, {"cluster.workers": n, "cluster.servers": s, "cluster.blocks": b, "sync.mode": mode,
                                "train.steps": steps})  # fmt: skip
    sizes, owners = even_blocks(MODEL_BYTES, b, s)
    return Simulation(config, TimeModel(), sizes, owners, coalesce=True)


def timed(spent: Counter[str], calls: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started
            calls[name] += 1

    return call


def timer_cost(repeats: int = 200_000) -> float:
    """Seconds a timer adds to one call: a timed call that does nothing, less the same call untimed."""

    def seconds(fn: Callable[[], Any]) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - started) / repeats

    def nothing() -> None:
        return None

    return seconds(timed(Counter(), Counter(), "x", nothing)) - seconds(nothing)


def in_cores(mode: str, n: int, s: int, b: int, steps: int) -> tuple[Counter[str], Counter[str]]:
    spent: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    originals = {(cls, name): getattr(cls, name) for cls, names in ((ServerCore, SERVER_CALLS),
                 (WorkerCore, WORKER_CALLS)) for name in names}  # fmt: skip
    try:
        for (cls, name), fn in originals.items():
            setattr(cls, name, timed(spent, calls, f"{cls.__name__}.{name}", fn))
        simulation(mode, n, s, b, steps).run()
    finally:
        for (cls, name), fn in originals.items():
            setattr(cls, name, fn)
    return spent, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["bsp", "auto"])
    args = parser.parse_args()
    shape = (args.workers, args.servers, args.blocks, args.steps)
    per_call = timer_cost()
    print(f"N = {args.workers}, S = {args.servers}, B = {args.blocks}, {args.steps} steps per worker, coalesced; "
          f"a timer costs {per_call * 1e6:.2f} µs per call\n")  # fmt: skip
    print("| mode | wall (s) | events | events/s | in cores (s) | core calls | in cores, share | 1,000 steps: "
          "whole run (s) | 1,000 steps: cores alone (s) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    breakdowns = []
    for mode in args.modes:
        sim = simulation(mode, *shape)
        result = sim.run()
        wall = result["simulation"]["wall_seconds"]
        spent, calls = in_cores(mode, *shape)
        cores = max(0.0, sum(spent.values()) - per_call * sum(calls.values()))
        scale = 1000 / args.steps
        events = result["simulation"]["events"]
        print(f"| {mode} | {wall:.2f} | {events:,} | {events / wall:,.0f} | {cores:.2f} | {sum(calls.values()):,} | "
              f"{cores / wall:.0%} | {wall * scale:,.0f} | {cores * scale:,.0f} |")  # fmt: skip
        breakdowns.append((mode, spent, calls))
    for mode, spent, calls in breakdowns:
        print(f"\n{mode}, per core call (timer's cost removed):")
        for name, seconds in spent.most_common():
            each = max(0.0, seconds / calls[name] - per_call)
            print(f"  {name:26} {calls[name]:9,} calls  {each * 1e6:6.1f} µs each")


if __name__ == "__main__":
    main()
