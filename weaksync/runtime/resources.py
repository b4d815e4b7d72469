"""Process resource figures and small file helpers shared by every role."""

from __future__ import annotations

import ctypes
import gc
import resource
import time


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def private_dirty_bytes() -> int:
    """Memory this process has written and shares with no other (Linux /proc/self/smaps_rollup): what a forked
    child really costs, which RSS does not show."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


def memory_figures() -> dict[str, int | float]:
    """What a role's summary records about its resources: peak RSS, how many objects it froze to keep
    sharing them with the forkserver (see `freeze_inherited_objects`), and the CPU seconds it used (all its
    threads), which on a shared machine say more about a role's per-step cost than wall time does."""
    return {
        "peak_rss_bytes": peak_rss_bytes(),
        "gc_frozen_objects": gc.get_freeze_count(),
        "cpu_s": round(time.process_time(), 3),
    }


M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
LARGE_ALLOCATION = 1 << 20


def _glibc() -> ctypes.CDLL | None:
    """The C library, or None where it is not glibc (its malloc tuning calls are glibc's own)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def return_large_frees_to_os(threshold: int = LARGE_ALLOCATION) -> bool:
    """Serve allocations of >= `threshold` bytes with their own mappings, so freeing one returns it to the OS.

    glibc raises its mmap threshold each time a large block is freed; after that, multi-MB tensors (a
    server's per-version snapshots, message buffers) come from the heap, and the freed ones stay resident: a
    ResNet-50 server's RSS grew by its share every few rounds. A fixed threshold stops that. Servers only: a
    process that computes allocates every activation afresh, page by page, under a fixed threshold, which
    made ResNet-20's forward/backward at batch 32 2.0-2.5x slower (benchmarks/allocator.py), so workers and
    the evaluator keep glibc's adaptive threshold, as plain PyTorch does. Returns False where the C library
    has no mallopt (not glibc)."""
    libc = _glibc()
    return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(M_MMAP_THRESHOLD, threshold))


def trim_heap() -> bool:
    """Hand the heap's free memory back to the OS (glibc malloc_trim), after a burst of small allocations
    has been freed: building a model to copy θ₀ out of it leaves freed parameter tensors under the mmap
    threshold resident otherwise (6-7 MiB in a ResNet-50 server). Returns False without glibc."""
    libc = _glibc()
    return bool(libc is not None and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))


def freeze_inherited_objects() -> int:
    """Move every object this process holds now into the garbage collector's permanent generation.

    A forkserver child shares torch's and weaksync's preloaded Python objects with the forkserver, page by
    page, until something writes to them. A full collection writes to every tracked object's header, and
    so made ~90 MiB private in each child (benchmarks/forkserver_gc.py: Private_Dirty 3.9 -> 94.5 MiB);
    after freezing, the same collection made 0.3 MiB private. Frozen objects are never collected: call
    this first thing in a child, before it creates garbage of its own. Returns how many were frozen."""
    gc.freeze()
    return gc.get_freeze_count()
