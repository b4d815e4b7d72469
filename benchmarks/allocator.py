"""Forward/backward time with glibc's adaptive mmap threshold against the fixed one servers use.

    python benchmarks/allocator.py --repeats 2

Why it matters: `return_large_frees_to_os` fixes glibc's mmap threshold at 1 MiB so that a server's freed
snapshots leave the process. In a process that trains, every activation of at least 1 MiB then gets a
fresh mapping that the kernel zero-fills page by page on every step. This measures that cost on the
worker's own computation, in fresh interpreters (the threshold is per process), interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = """
import sys, time, torch
from weaksync.runtime.resources import return_large_frees_to_os
from weaksync.training.models import build_model
model_name, batch, steps, fixed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "fixed"
channels, size = (1, 8) if model_name == "digits-cnn" else (3, 32)  # each model on its own data's images
if fixed:
    assert return_large_frees_to_os(), "no glibc mallopt here"
torch.set_num_threads(1)
model = build_model(model_name, 10, channels, size)
x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
def step():
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - start) / steps)
"""


def measure(model: str, batch: int, steps: int, setting: str) -> float:
    args = [sys.executable, "-c", CHILD, model, str(batch), str(steps), setting]
    return float(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["digits-cnn", "resnet20"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"batch {args.batch_size}, {args.steps} steps after 3 warm-up steps, one thread, median of {args.repeats}")
    print("| model | adaptive threshold (ms/step) | fixed 1 MiB threshold (ms/step) | fixed ÷ adaptive |")
    print("| --- | --- | --- | --- |")
    for model in args.models:
        times: dict[str, list[float]] = {"adaptive": [], "fixed": []}
        for _ in range(args.repeats):
            for setting in times:  # interleaved, so machine noise hits both
                times[setting].append(measure(model, args.batch_size, args.steps, setting))
        adaptive, fixed = (statistics.median(times[s]) * 1e3 for s in ("adaptive", "fixed"))
        print(f"| {model} | {adaptive:.1f} | {fixed:.1f} | {fixed / adaptive:.2f} |", flush=True)


if __name__ == "__main__":
    main()
