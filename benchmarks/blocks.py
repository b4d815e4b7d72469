"""Straggler-free cost of cutting θ into blocks: step time, messages and bytes per step as B grows.

    python benchmarks/blocks.py --blocks 2 4 16 64 256 --out runs/bench-blocks
    python benchmarks/blocks.py --blocks 2 256 --modes auto bsp --wire coalesced --repeats 3

The "packet storm" question: a message per block multiplies the messages per step by B; coalesced (the
default, `cluster.coalesce`), a worker sends one push and one pull per server and step whatever B is. Runs
the default mode (auto), bsp (waits for every block) and partial-pull (b = B/2) on the default digits job
with no stragglers, with and without coalescing, interleaved, and prints one Markdown row per run, with the
step time against the same mode and wire at the first B of the same repeat.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from weaksync.cli.main import stop_on_interrupt
from weaksync.config import load_config
from weaksync.runtime.launcher import run_local


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="*", default=[2, 4, 16, 64, 256])
    parser.add_argument("--modes", nargs="*", default=["auto", "bsp", "partial-pull"])
    parser.add_argument("--wire", nargs="*", choices=["coalesced", "per-block"], default=["coalesced", "per-block"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; ratios within a repeat")
    parser.add_argument("--out", default="runs/bench-blocks")
    args = parser.parse_args()
    print("| repeat | B | mode | wire | step time p50 (ms) | × smallest B | worker steps/s | messages / step "
          "| bytes / step | server CPU ms / step | worker CPU ms / step | final accuracy |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    first: dict[tuple[int, str, str], float] = {}
    for repeat, blocks, mode, wire in itertools.product(range(args.repeats), args.blocks, args.modes, args.wire):
        cfg = load_config(None, {"cluster.blocks": blocks, "sync.mode": mode, "train.steps": args.steps,
                                 "cluster.coalesce": wire == "coalesced", "run.out_dir": args.out,
                                 "run.name": f"B{blocks}-{mode}-{wire}-r{repeat}"})  # fmt: skip
        result = run_local(cfg)
        s = result.summary
        t, p50 = s["traffic"], s["step_time"]["p50"]
        base = first.setdefault((repeat, mode, wire), p50)
        server_cpu, worker_cpu = (cpu_ms_per_step(result.run_dir, role, s["steps"]) for role in ("server", "worker"))
        print(f"| {repeat} | {blocks} | {mode} | {wire} | {p50 * 1000:.1f} | {p50 / base:.2f} | {s['steps_per_s']:.0f} "
              f"| {t['msgs_per_step']:.1f} | {t['bytes_per_step']:,.0f} | {server_cpu:.1f} | {worker_cpu:.1f} "
              f"| {s['final_accuracy']:.3f} |", flush=True)  # fmt: skip


def cpu_ms_per_step(run_dir: Path, role: str, steps: int) -> float:
    """CPU milliseconds all processes of `role` used (their summaries' cpu_s, start-up included) per worker
    step of the run: on a 2-core machine shared by 7 processes this is the per-block cost wall time hides."""
    total = sum(json.loads(p.read_text())["cpu_s"] for p in (run_dir / "procs").glob(f"{role}-*.json"))
    return 1000 * total / max(1, steps)


if __name__ == "__main__":
    main()
