"""A forked child that freezes what it inherited keeps sharing it through a full garbage collection (that
every role does so is checked in tests/test_e2e_modes.py)."""

from __future__ import annotations

import os
import sys

import pytest

from weaksync.runtime.resources import freeze_inherited_objects, private_dirty_bytes

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.path.exists("/proc/self/smaps_rollup"),
    reason="needs Linux fork and /proc/self/smaps_rollup",
)


def privatized_by_gc(freeze: bool) -> int:
    """Bytes a full collection makes private in a forked child, as in a forkserver child after preloading."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's atexit or pytest teardown
        try:
            if freeze:
                freeze_inherited_objects()
            before = private_dirty_bytes()
            import gc

            gc.collect()
            os.write(write, str(private_dirty_bytes() - before).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        grown = int(f.read())
    os.waitpid(pid, 0)
    return grown


def test_a_frozen_child_keeps_the_inherited_heap_shared() -> None:
    inherited = [[i] for i in range(400_000)]  # ~50 MiB of tracked objects, like a preloaded torch
    try:
        unfrozen = privatized_by_gc(freeze=False)
        frozen = privatized_by_gc(freeze=True)
    finally:
        del inherited
    assert unfrozen > 20 << 20, f"the probe is too small to show the effect ({unfrozen >> 20} MiB)"
    assert frozen < unfrozen / 10, f"frozen child still privatized {frozen >> 20} MiB of {unfrozen >> 20} MiB"
