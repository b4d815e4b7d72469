"""Issue-3 checks, side by side and interleaved: does tolerating stragglers pay when something is slow?

    python benchmarks/stragglers.py --repeats 2 --out runs/bench-stragglers

1. One persistent ×4 slow worker of 4 (scenario slow-worker-x4): backup (k = 3) against bsp.
2. One of 2 servers answering ×4 slower (scenario slow-server): partial-pull (b = B/2) against bsp.
3. A worker throttled to 25 % of one CPU by the kernel (cgroup v1 cpu), no synthetic delay: its compute
   time against its peers' (skipped with the reason where cgroups are not writable). 3 workers, 1 server,
   batch 128: with 7 processes on a 2-core host the peers themselves get only ~half a CPU each, which
   would measure the host's contention rather than the throttle.
Pairs run at the default batch (32) and at 128, where compute, not messaging overhead, fills the step.
Prints Markdown tables (medians over repeats); the runs stay in --out.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from typing import Any

from weaksync.cli.main import stop_on_interrupt
from weaksync.config import load_config
from weaksync.runtime.launcher import run_local
from weaksync.stragglers.cgroup import available

PAIRS = {
    "slow-worker-x4": ("bsp", "backup", {}),
    "slow-server": ("bsp", "partial-pull", {"sync.pull_fraction": 0.5}),
}


def run(out: str, name: str, **overrides: Any) -> dict[str, Any]:
    cfg = load_config(None, {"run.out_dir": out, "run.name": name, **overrides})
    return run_local(cfg).summary


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    stop_on_interrupt()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="runs/bench-stragglers")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[32, 128])
    args = parser.parse_args()
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for rep in range(args.repeats):
        for batch in args.batch_sizes:
            for scenario, (base, tolerant, extra) in PAIRS.items():
                for mode in (base, tolerant):
                    s = run(args.out, f"{scenario}-b{batch}-{mode}-{rep}", scenario=scenario, **{"sync.mode": mode,
                            "train.steps": args.steps, "train.batch_size": batch, **extra})  # fmt: skip
                    results.setdefault((scenario, batch, mode), []).append(s)
                    print(f"{scenario} batch {batch} {mode} rep {rep}: {s['steps_per_s']:.1f} steps/s, "
                          f"acc {s['final_accuracy']:.3f}", flush=True)  # fmt: skip

    print(
        "\n| scenario | batch | mode | worker steps/s | block updates/s | time to 95 % (s) | final accuracy "
        "| stragglers named |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (scenario, batch, mode), rows in results.items():
        updates = statistics.median(r["updates"] / r["train_seconds"] for r in rows)
        named = "; ".join(sorted({f"{f['role']} {f['id']}" + (" (persistent)" if f.get("persistent") else "")
                                  for r in rows for f in r["stragglers"]}))  # fmt: skip
        tta = med(rows, "time_to_accuracy")
        print(
            f"| {scenario} | {batch} | {mode} | {med(rows, 'steps_per_s'):.1f} | {updates:.1f} | "
            f"{'not reached' if tta is None else f'{tta:.2f}'} | {med(rows, 'final_accuracy'):.3f} | {named or '-'} |"
        )
    for (scenario, (base, tolerant, _)), batch in itertools.product(PAIRS.items(), args.batch_sizes):
        pairs = list(zip(results[(scenario, batch, base)], results[(scenario, batch, tolerant)]))
        ratios = [t["steps_per_s"] / b["steps_per_s"] for b, t in pairs]
        acc = [t["final_accuracy"] - b["final_accuracy"] for b, t in pairs]
        print(
            f"\n{scenario}, batch {batch}: {tolerant}/{base} steps/s per repeat: "
            f"{', '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {statistics.median(ratios):.2f}); accuracy difference: "
            f"{', '.join(f'{a * 100:+.1f} pt' for a in acc)}"
        )

    reason = available()
    if reason:
        print(f"\ncgroup throttling skipped: {reason}")
        return
    print("\n| run | worker-1 compute p50 (ms) | peers' compute p50 (ms) | ratio |")
    print("| --- | --- | --- | --- |")
    for rep in range(args.repeats):
        s = run(args.out, f"throttle-{rep}", throttle={"worker-1": 0.25}, **{"sync.mode": "bsp",
                "train.steps": args.steps, "train.batch_size": 128, "cluster.workers": 3,
                "cluster.servers": 1})  # fmt: skip
        compute = {w: v["compute_time"]["p50"] for w, v in s["workers"].items()}
        peers = statistics.median(v for w, v in compute.items() if w != "1")
        print(f"| throttle-{rep} | {compute['1'] * 1000:.1f} | {peers * 1000:.1f} | {compute['1'] / peers:.2f} |")


if __name__ == "__main__":
    main()
