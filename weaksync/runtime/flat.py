"""A model whose parameters and float buffers live in one flat float32 vector, in layout order.

Re-pointing every tensor into one storage makes installing a block a single memcpy and turns a step's
gradient into slices of one buffer, so per-block messages cost no gathering.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.layout import Block, BlockLayout, TensorSpec, build_layout, order_tensors, resolve_num_blocks
from ..transport.messages import Payloads


def tensor_specs(model: nn.Module) -> tuple[TensorSpec, ...]:
    """θ's tensors in layout order: trainable parameters, then floating-point buffers. Frozen parameters
    (requires_grad=False) are not part of θ: every process keeps its own copy, so no optimizer (nor weight
    decay) ever touches them and they stay bit-identical."""
    params = [
        TensorSpec(n, tuple(p.shape), str(p.dtype).removeprefix("torch."), False)
        for n, p in model.named_parameters()
        if p.requires_grad
    ]
    buffers = [
        TensorSpec(n, tuple(b.shape), str(b.dtype).removeprefix("torch."), True) for n, b in model.named_buffers()
    ]
    return order_tensors(params, buffers)


def model_layout(model: nn.Module, num_servers: int, num_blocks: int | None) -> BlockLayout:
    specs = tensor_specs(model)
    total = sum(t.numel for t in specs)
    return build_layout(specs, resolve_num_blocks(num_blocks, total, num_servers), num_servers)


def block_values(model: nn.Module, layout: BlockLayout, blocks: Sequence[Block]) -> dict[int, torch.Tensor]:
    """θ of the given blocks only, copied straight from the model's tensors, so a server that owns a share
    of the blocks never holds all of θ (a full flat copy doubled its peak memory)."""
    out = {b.index: torch.empty(b.stop - b.start, dtype=torch.float32) for b in blocks}
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    offset = 0
    for spec in layout.tensors:
        flat = tensors[spec.name].detach().reshape(-1)
        lo, hi = offset, offset + spec.numel
        for b in blocks:
            start, stop = max(lo, b.start), min(hi, b.stop)
            if start < stop:
                out[b.index][start - b.start : stop - b.start].copy_(flat[start - lo : stop - lo])
        offset = hi
    return out


# below this many values per block an indexed copy of a whole reply beats a copy per block: it costs ~1.4 ns
# a value against ~0.3 ns for a contiguous one, and a slice ~1.5 µs (128 blocks of 590: 107 against 190+ µs;
# 2 blocks of 37,000: 107 against 20 µs)
INDEXED_INSTALL_BLOCK = 1024


class FlatModel:
    """Owns `values` (θ) and `grads` (∂loss/∂params, buffers' slots unused) as flat float32 vectors."""

    def __init__(self, model: nn.Module, layout: BlockLayout):
        self.model = model.float()
        self.layout = layout
        self.values = torch.zeros(layout.total, dtype=torch.float32)
        self.grads = torch.zeros(layout.num_params, dtype=torch.float32)
        self.positions: dict[tuple[int, ...], torch.Tensor] = {}  # a reply's blocks -> their positions in θ
        modules = dict(model.named_modules())
        self.grad_views: list[tuple[nn.Parameter, torch.Tensor]] = []  # each parameter and its slot in `grads`
        offset = 0
        for spec in layout.tensors:
            owner_name, _, attr = spec.name.rpartition(".")
            owner = modules[owner_name]
            view = self.values[offset : offset + spec.numel].view(spec.shape)
            if spec.is_buffer:
                view.copy_(owner._buffers[attr])
                owner._buffers[attr] = view
            else:
                param = owner._parameters[attr]
                view.copy_(param.data)
                param.data = view
                param.grad = self.grads[offset : offset + spec.numel].view(spec.shape)
                self.grad_views.append((param, param.grad))
            offset += spec.numel

    def install(self, block: Block, payload: torch.Tensor) -> None:
        """Overwrite one block of θ with values received from its server."""
        self.values[block.start : block.stop].copy_(payload)

    def install_all(self, blocks: Sequence[Block], payloads: Sequence[torch.Tensor]) -> None:
        """Overwrite several blocks at once (the blocks of one coalesced reply): one fused copy, not one call
        per block. When the payloads are a whole received frame (`Payloads.flat`, every block of the reply
        installed) of small blocks, one indexed copy from it, with the positions of that set of blocks kept
        for the next reply of the same blocks."""
        if not blocks:
            return
        flat = getattr(payloads, "flat", None)
        small = flat is not None and flat.numel() < INDEXED_INSTALL_BLOCK * len(blocks)
        if small and len(blocks) == len(payloads):
            self.values.index_copy_(0, self._positions(blocks), flat)
            return
        torch._foreach_copy_([self.values[b.start : b.stop] for b in blocks], list(payloads))

    def gather(self, vector: torch.Tensor, blocks: Sequence[Block]) -> Sequence[torch.Tensor]:
        """The slices of `vector` (a push vector) for a push of `blocks`: small blocks as one indexed copy
        into the message's payload (`Payloads`, sent as is), as a reply of them is installed; large ones as
        views, which the message joins (one copy either way)."""
        total = sum(b.stop - b.start for b in blocks)
        if len(blocks) > 1 and total < INDEXED_INSTALL_BLOCK * len(blocks):
            return Payloads(vector.index_select(0, self._positions(blocks)), [b.stop - b.start for b in blocks])
        return tuple(vector[b.start : b.stop] for b in blocks)

    def _positions(self, blocks: Sequence[Block]) -> torch.Tensor:
        """The positions in θ of a set of blocks, in their order (kept: replies and pushes repeat the same sets)."""
        key = tuple(b.index for b in blocks)
        index = self.positions.get(key)
        if index is None:
            index = self.positions[key] = torch.cat([torch.arange(b.start, b.stop) for b in blocks])
        return index

    def zero_grad(self) -> None:
        self.grads.zero_()

    def gather_grads(self) -> None:
        """Bring back into `grads` any gradient that no longer lives there: `zero_grad()` (set_to_none) or a
        loop that assigns `.grad` makes backward allocate new tensors; their values are copied in."""
        for param, view in self.grad_views:
            grad = param.grad
            if grad is not None and grad.data_ptr() == view.data_ptr():
                continue
            if grad is None:
                view.zero_()
            else:
                view.copy_(grad)
            param.grad = view

    def push_vector(self) -> torch.Tensor:
        """A fresh vector holding gradients in parameter slots and current values in buffer slots; fresh so
        that zero-copy sends of its slices can never see a later step's data."""
        self.gather_grads()
        out = torch.empty(self.layout.total, dtype=torch.float32)
        n = self.layout.num_params
        out[:n].copy_(self.grads)
        out[n:].copy_(self.values[n:])
        return out
