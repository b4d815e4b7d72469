"""Straggler-free cost of cutting θ into blocks: step time, messages and bytes per step as B grows.

    python benchmarks/blocks.py --blocks 2 4 16 64 256 --out runs/bench-blocks

The "packet storm" question: every block is its own push, pull and reply, so B multiplies the messages
per step. Runs bsp (waits for every block) and partial-pull (b = B/2) on the default digits job with no
stragglers, interleaved, and prints one Markdown row per (B, mode).
"""

from __future__ import annotations

import argparse

from weaksync.cli.main import stop_on_interrupt
from weaksync.config import load_config
from weaksync.runtime.launcher import run_local


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="*", default=[2, 4, 16, 64, 256])
    parser.add_argument("--modes", nargs="*", default=["bsp", "partial-pull"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="runs/bench-blocks")
    args = parser.parse_args()
    print("| B | mode | step time p50 (ms) | worker steps/s | messages / step | bytes / step | final accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for blocks in args.blocks:
        for mode in args.modes:
            cfg = load_config(None, {"cluster.blocks": blocks, "sync.mode": mode, "train.steps": args.steps,
                                     "run.out_dir": args.out, "run.name": f"B{blocks}-{mode}"})  # fmt: skip
            s = run_local(cfg).summary
            t = s["traffic"]
            print(f"| {blocks} | {mode} | {s['step_time']['p50'] * 1000:.1f} | {s['steps_per_s']:.0f} "
                  f"| {t['msgs_per_step']:.1f} | {t['bytes_per_step']:,.0f} | {s['final_accuracy']:.3f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
