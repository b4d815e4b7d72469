"""The tensors behind a server's blocks: values, a real torch.optim optimizer, accumulators, snapshots.

It performs what the server core decides (Accept, Apply); it never decides anything itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.actions import Accept, Apply
from ..core.layout import Block, BlockLayout

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LRFunction = Callable[[int, int], float]  # (worker step, number of contributors) -> lr


class BlockStore:
    """One server's share of θ. Parameter slots are stepped by the optimizer with the averaged gradient;
    buffer slots (BatchNorm statistics) are set to the average of the contributed values."""

    def __init__(
        self,
        layout: BlockLayout,
        server: int,
        initial: dict[int, torch.Tensor],
        make_optimizer: OptimizerFactory,
        lr_at: LRFunction,
    ):
        self.blocks: dict[int, Block] = {b.index: b for b in layout.blocks_of(server)}
        self.values: dict[int, torch.Tensor] = {}
        self.params: dict[int, nn.Parameter] = {}
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        self.acc: dict[int, torch.Tensor] = {}
        self.weight_sum: dict[int, float] = {}
        self.snapshots: dict[int, torch.Tensor] = {}
        self.lr_at = lr_at
        for j, block in self.blocks.items():
            values = initial[j].clone()
            self.values[j] = values
            if block.num_params:
                self.params[j] = nn.Parameter(values[: block.num_params])  # shares storage with values
                self.optimizers[j] = make_optimizer([self.params[j]])
            self.acc[j] = torch.zeros_like(values)
            self.weight_sum[j] = 0.0
            self.snapshots[j] = values.clone()

    def accept(self, action: Accept, payload: torch.Tensor) -> None:
        self.acc[action.block].add_(payload, alpha=action.weight)
        self.weight_sum[action.block] += action.weight

    def apply(self, action: Apply, progress: float | None = None) -> None:
        """Average, step, refresh the send snapshot. `progress` (average worker steps so far) drives the LR
        schedule; without it, the contributors' step does. A new snapshot tensor per version: replies already
        handed to ZeroMQ keep pointing at the old one, so no reply ever carries a half-written block."""
        j = action.block
        block, values, acc = self.blocks[j], self.values[j], self.acc[j]
        acc.div_(self.weight_sum[j])
        n = block.num_params
        if n:
            param, opt = self.params[j], self.optimizers[j]
            param.grad = acc[:n]
            for group in opt.param_groups:
                group["lr"] = self.lr_at(action.step if progress is None else progress, len(action.contributors))
            opt.step()
            param.grad = None
        if n < block.size:
            values[n:].copy_(acc[n:])
        acc.zero_()
        self.weight_sum[j] = 0.0
        self.snapshots[j] = values.clone()

    def snapshot(self, block: int) -> torch.Tensor:
        return self.snapshots[block]

    def nbytes(self) -> int:
        """Bytes held for values, accumulators, snapshots and optimizer state."""
        total = sum(v.nbytes + self.acc[j].nbytes + self.snapshots[j].nbytes for j, v in self.values.items())
        for opt in self.optimizers.values():
            for state in opt.state.values():
                total += sum(t.nbytes for t in state.values() if isinstance(t, torch.Tensor))
        return total
