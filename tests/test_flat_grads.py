"""θ holds only what the servers train: frozen parameters stay out of it, and a loop's own gradient habits
(zero_grad with set_to_none, assigning .grad) still reach the flat push vector."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weaksync.runtime.flat import FlatModel, model_layout


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    return model


def test_frozen_parameters_are_not_part_of_theta() -> None:
    model = _model()
    layout = model_layout(model, num_servers=1, num_blocks=1)
    names = [t.name for t in layout.tensors]
    assert "0.weight" not in names and "0.bias" in names and "1.running_mean" in names
    assert layout.num_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = model[0].weight.detach().clone()
    flat = FlatModel(model, layout)
    flat.values.add_(1.0)  # every value the servers could send
    assert torch.equal(model[0].weight, frozen), "a frozen parameter moved with θ"


def test_gradients_reach_the_push_vector_after_set_to_none() -> None:
    model = _model()
    flat = FlatModel(model, model_layout(model, 1, 1))
    x = torch.randn(8, 3)
    model(x).sum().backward()
    expected = flat.push_vector()[: flat.layout.num_params].clone()
    flat.zero_grad()
    model.zero_grad(set_to_none=True)  # what torch's default zero_grad does: backward allocates new tensors
    model(x).sum().backward()
    assert torch.equal(flat.push_vector()[: flat.layout.num_params], expected)
    model[2].weight.grad = None  # a parameter without a gradient contributes zeros
    got = flat.push_vector()
    offset = sum(t.numel for t in flat.layout.tensors[: [t.name for t in flat.layout.tensors].index("2.weight")])
    assert torch.count_nonzero(got[offset : offset + 8]) == 0
    model(x).sum().backward()  # the slots are the gradients again: backward accumulates into them
    assert torch.count_nonzero(flat.grads) > 0


@pytest.mark.parametrize("indexed", [True, False])
def test_a_whole_reply_installs_as_block_by_block(indexed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoded reply of a server's blocks (interleaved in θ) lands where the per-block copy puts it, by
    one indexed copy (small blocks) or a copy per block (large ones)."""
    from weaksync.runtime import flat as flat_module
    from weaksync.transport.messages import Blocks, decode, encode

    monkeypatch.setattr(flat_module, "INDEXED_INSTALL_BLOCK", 1 << 20 if indexed else 0)

    layout = model_layout(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), num_servers=2, num_blocks=6)
    mine = [b for b in layout.blocks if layout.owners[b.index] == 1]
    values = tuple(torch.randn(b.size) for b in mine)
    reply = decode([bytes(f) for f in encode(Blocks(tuple(b.index for b in mine), (1,) * len(mine), values))])
    whole, per_block = (FlatModel(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), layout) for _ in range(2))
    per_block.values.copy_(whole.values)  # the blocks of server 0, which the reply leaves alone
    for _ in range(2):  # the second time from the kept positions
        whole.install_all(mine, reply.values)
    for b, v in zip(mine, values):
        per_block.install(b, v)
    assert torch.equal(whole.values, per_block.values)


@pytest.mark.parametrize("indexed", [True, False])
def test_a_gathered_push_carries_the_slices_of_its_blocks(indexed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push of a server's blocks (interleaved in θ) carries each block's slice of the push vector, whether
    gathered by one indexed copy (small blocks) or as views (large ones), and decodes to the same values."""
    from weaksync.runtime import flat as flat_module
    from weaksync.transport.messages import Push, decode, encode

    monkeypatch.setattr(flat_module, "INDEXED_INSTALL_BLOCK", 1 << 20 if indexed else 0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    layout = model_layout(model, num_servers=2, num_blocks=6)
    mine = [b for b in layout.blocks if layout.owners[b.index] == 1]
    vector = torch.randn(layout.total)
    grads = FlatModel(model, layout).gather(vector, mine)
    assert hasattr(grads, "flat") == indexed
    push = decode([bytes(f) for f in encode(Push(0, 0, tuple(b.index for b in mine), (0,) * len(mine), grads))])
    for b, got in zip(mine, push.grads):
        assert torch.equal(got, vector[b.start : b.stop])
