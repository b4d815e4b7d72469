"""`auto` against every static mode at N = 1,000 workers, in the simulator: throughput and what it costs in
gradients, under shipped straggler scenarios.

    python benchmarks/sim_auto_scale.py --out runs/sim-auto

The simulator has no convergence model, so this is not time to accuracy: it shows the step rate each mode
reaches, and how many of the computed gradients reached an update (the statistical price of a faster
mode) and how stale the blocks the workers computed on were. N = 1,000, S = 16, B = 32 (two blocks per
server), coalesced, the digits CNN's θ and compute (20 ms ± 10 %), the default time model; each scenario's
rules name the same workers and servers as in a real run (worker 1, server 0, ...), so one of 1,000 workers
or one of 16 servers is slow. Writes OUT/sim_auto.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from weaksync.config import load_config
from weaksync.sim.engine import Simulation, even_blocks
from weaksync.sim.timing import TimeModel

MODEL_BYTES = 605_224
MODES = ["auto", "bsp", "backup", "partial-pull", "partial", "ssp", "async"]


def one(scenario: str, mode: str, n: int, s: int, b: int, steps: int) -> dict[str, Any]:
    rules = None if scenario == "none" else scenario
    config = load_config(None, {"cluster.workers": n, "cluster.servers": s, "cluster.blocks": b, "sync.mode": mode,
                                "train.steps": steps, "scenario": rules})  # fmt: skip
    sizes, owners = even_blocks(MODEL_BYTES, b, s)
    r = Simulation(config, TimeModel(), sizes, owners).run()
    computed = r["steps"] * b
    return {
        "scenario": scenario, "mode": mode, "steps_per_s": r["steps_per_s"],
        "step_p50_ms": (r["step_time"]["p50"] or 0.0) * 1e3,
        "used_share": r["contributions"]["accepted"] / computed if computed else None,
        "stale_per_step": r["blocks_per_step"]["stale_mean"],
        "wall_s": r["simulation"]["wall_seconds"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/sim-auto"))
    parser.add_argument("--scenarios", nargs="+", default=["none", "slow-worker-x4", "slow-server", "spikes-5pct"])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="steps per worker")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [
        one(scenario, mode, args.workers, args.servers, args.blocks, args.steps)
        for scenario in args.scenarios
        for mode in MODES
    ]
    (args.out / "sim_auto.json").write_text(json.dumps(rows, indent=1))
    print("| scenario | mode | steps/s | ÷ best static | step p50 (ms) | gradients used | stale blocks per step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for scenario in args.scenarios:
        sel = [r for r in rows if r["scenario"] == scenario]
        best = max(r["steps_per_s"] for r in sel if r["mode"] != "auto")
        for r in sel:
            print(f"| {scenario} | {r['mode']} | {r['steps_per_s']:,.0f} | {r['steps_per_s'] / best:.2f} "
                  f"| {r['step_p50_ms']:.1f} | {r['used_share']:.1%} | {r['stale_per_step']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
