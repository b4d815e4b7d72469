"""The packet-storm question at scale, in the simulator: step time, and messages and bytes per server per second,
against the number of workers N and of blocks B, with and without partial pull, with and without coalescing.

    python benchmarks/sim_scale.py --out runs/sim-scale

The time model is the simulator's default (a 10 Gbit/s NIC per host, 50 µs latency, 30 µs and 0.25 ns per
byte of receiver CPU per message, weaksync/sim/timing.py), with the digits CNN's θ (605 kB) and its
compute (20 ms ± 10 %): what changes between rows is only the protocol's traffic. Steps per worker shrink
as N grows (simulating 1,000 workers costs seconds per step on this machine). Writes OUT/sim_scale.json,
OUT/sim_scale.png and a Markdown table on stdout.
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


def one(n: int, s: int, b: int, mode: str, coalesce: bool, steps: int) -> dict[str, Any]:
    config = load_config(None, {"cluster.workers": n, "cluster.servers": s, "cluster.blocks": b, "sync.mode": mode,
                                "train.steps": steps})  # fmt: skip
    sizes, owners = even_blocks(MODEL_BYTES, b, s)
    r = Simulation(config, TimeModel(), sizes, owners, coalesce=coalesce).run()
    servers = r["servers"].values()
    return {
        "N": n, "S": s, "B": b, "mode": mode, "coalesce": coalesce, "steps": steps,
        "step_p50_ms": r["step_time"]["p50"] * 1e3 if r["step_time"]["p50"] is not None else None,
        "steps_per_s": r["steps_per_s"],
        "msgs_per_step": r["traffic"]["msgs_per_step"],
        "server_msgs_in_per_s": max(x["msgs_in_per_s"] for x in servers),
        "server_mb_in_per_s": max(x["bytes_in_per_s"] for x in servers) / 1e6,
        "events": r["simulation"]["events"], "wall_s": r["simulation"]["wall_seconds"],
    }  # fmt: skip


def steps_for(n: int, b: int) -> int:
    """Enough steps for a steady state, few enough that a row takes seconds (cost ~ N × B × steps)."""
    return max(3, min(60, 400_000 // (n * b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/sim-scale"))
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64, 256, 1000])
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 64, 256, 1024])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.workers:  # N sweep: S = 16, B = 64
        for mode in ("bsp", "partial-pull"):
            for coalesce in (False, True):
                rows.append({"sweep": "N", **one(n, 16, 64, mode, coalesce, steps_for(n, 64))})
                print(rows[-1], flush=True)
    for b in args.blocks:  # B sweep: N = 64, S = 16
        for coalesce in (False, True):
            rows.append({"sweep": "B", **one(64, 16, b, "bsp", coalesce, steps_for(64, b))})
            print(rows[-1], flush=True)
    (args.out / "sim_scale.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "sim_scale.png")
    keys = ["sweep", "N", "S", "B", "mode", "coalesce", "steps", "step_p50_ms", "msgs_per_step", "server_msgs_in_per_s",
            "server_mb_in_per_s", "wall_s"]  # fmt: skip
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print("| " + " | ".join(cells) + " |")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for mode in ("bsp", "partial-pull"):
        for coalesce in (False, True):
            sel = [r for r in rows if r["sweep"] == "N" and r["mode"] == mode and r["coalesce"] == coalesce]
            label = f"{mode}{', coalesced' if coalesce else ''}"
            axes[0].plot([r["N"] for r in sel], [r["step_p50_ms"] for r in sel], marker="o", label=label)
            axes[1].plot([r["N"] for r in sel], [r["server_msgs_in_per_s"] for r in sel], marker="o", label=label)
    for coalesce in (False, True):
        sel = [r for r in rows if r["sweep"] == "B" and r["coalesce"] == coalesce]
        label = "coalesced" if coalesce else "a message per block"
        axes[2].plot([r["B"] for r in sel], [r["step_p50_ms"] for r in sel], marker="o", label=label)
    axes[0].set(xscale="log", xlabel="workers N (S = 16, B = 64)", ylabel="step time p50 (ms)")
    axes[1].set(xscale="log", yscale="log", xlabel="workers N", ylabel="messages into the busiest server per s")
    axes[2].set(xscale="log", xlabel="blocks B (N = 64, S = 16)", ylabel="step time p50 (ms)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("simulated (weaksync simulate's default time model): the traffic of blocks at scale")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
