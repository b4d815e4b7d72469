"""A server's θ₀ comes block by block straight from the model; it must equal the flat θ's slices."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weaksync.runtime.flat import FlatModel, block_values, model_layout
from weaksync.training.models import build_model


@settings(max_examples=15, deadline=None)
@given(servers=st.integers(1, 3), blocks=st.integers(1, 40), seed=st.integers(0, 10))
def test_block_values_equal_the_flat_vector_slices(servers: int, blocks: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_model("resnet20", 10, 3, 32)  # parameters and BatchNorm buffers; blocks cut through tensors
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_()  # buffers that differ from their defaults
    blocks = max(blocks, servers)
    layout = model_layout(model, servers, blocks)
    flat = FlatModel(build_model("resnet20", 10, 3, 32), layout)
    flat.model.load_state_dict(model.state_dict())  # copies into the flat vector's views
    for s in range(servers):
        got = block_values(model, layout, layout.blocks_of(s))
        assert set(got) == {b.index for b in layout.blocks_of(s)}
        for b in layout.blocks_of(s):
            assert torch.equal(got[b.index], flat.values[b.start : b.stop])


def test_freed_large_tensors_leave_the_process() -> None:
    """With the fixed mmap threshold, repeatedly replacing a 16 MiB tensor does not grow RSS."""
    import subprocess
    import sys

    code = """
import torch
from weaksync.runtime.resources import return_large_frees_to_os
assert return_large_frees_to_os()
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096
keep = [torch.ones(4 << 20) for _ in range(4)]
before = rss()
for i in range(40):
    keep[i % 4] = keep[i % 4].clone() + 1   # like a server's snapshot per version
    small = [torch.ones(300_000) for _ in range(8)]  # smaller allocations in between
print(rss() - before)
"""
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt and /proc/self/statm are Linux (glibc) features")
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown < 40 << 20, f"RSS grew by {grown >> 20} MiB"
