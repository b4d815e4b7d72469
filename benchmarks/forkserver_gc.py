"""Real memory a full garbage collection costs a forkserver child, with and without freezing first.

    python benchmarks/forkserver_gc.py

weaksync's roles are children of a forkserver that preloaded torch and weaksync; they share its pages
until something writes to them. A full collection writes to every tracked object's header. This measures
Private_Dirty (from /proc/self/smaps_rollup) around `gc.collect()` in such a child, plain and after
`freeze_inherited_objects()` (what every role does first), interleaved.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
from typing import Any

from weaksync.runtime.launcher import PRELOAD
from weaksync.runtime.resources import freeze_inherited_objects, private_dirty_bytes

MiB = 1 << 20


def _child(freeze: bool, queue: Any) -> None:
    if freeze:
        freeze_inherited_objects()
    before = private_dirty_bytes()
    gc.collect()
    queue.put((before, private_dirty_bytes()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    print("| child | Private_Dirty before gc.collect() (MiB) | after (MiB) | made private (MiB) |")
    print("| --- | --- | --- | --- |")
    for _ in range(args.repeats):
        for freeze in (False, True):
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(freeze, queue))
            proc.start()
            before, after = queue.get(timeout=300)
            proc.join()
            name = "frozen first" if freeze else "plain"
            print(f"| {name} | {before / MiB:.1f} | {after / MiB:.1f} | {(after - before) / MiB:.1f} |", flush=True)


if __name__ == "__main__":
    main()
