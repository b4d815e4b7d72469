"""The tensors behind a server's blocks: values (also sent as is), a real torch.optim optimizer, accumulators.

It performs what the server core decides (Accept, Apply); it never decides anything itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..core.actions import Accept, Apply
from ..core.layout import Block, BlockLayout

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LRFunction = Callable[[int, int, int | None], float]  # (worker step, contributors, quorum in force) -> lr
MomentumFunction = Callable[[float], tuple[float, float]]  # staleness of accepted gradients -> (momentum, LR factor)


GRAD_NORM_SMOOTHING = 0.02  # weight of the newest update's gradient norm in a block's moving average


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
        momentum_at: MomentumFunction | None = None,
        clip: float | None = None,
    ):
        self.blocks: dict[int, Block] = {b.index: b for b in layout.blocks_of(server)}
        self.values: dict[int, torch.Tensor] = {}
        self.params: dict[int, nn.Parameter] = {}
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        self.acc: dict[int, torch.Tensor] = {}
        self.weight_sum: dict[int, float] = {}
        self.lr_at = lr_at
        self.momentum_at = momentum_at
        self.clip = clip
        self.grad_norm: dict[int, float] = {}  # moving average of each block's (clipped) gradient norm
        self.clipped = 0
        for j, block in self.blocks.items():
            values = initial[j]  # taken over, not copied: the caller hands fresh tensors
            self.values[j] = values
            if block.num_params:
                self.params[j] = nn.Parameter(values[: block.num_params])  # shares storage with values
                self.optimizers[j] = make_optimizer([self.params[j]])
            self.acc[j] = torch.zeros_like(values)
            self.weight_sum[j] = 0.0

    def accept(self, action: Accept, payload: torch.Tensor) -> None:
        self.acc[action.block].add_(payload, alpha=action.weight)
        self.weight_sum[action.block] += action.weight

    def apply(self, action: Apply, progress: float | None = None) -> None:
        """Average, then step a fresh copy of the values (copy-on-write). `progress` (average worker steps so
        far) drives the LR schedule; without it, the contributors' step does.

        Replies hand the values tensor to ZeroMQ without copying, so a version is never written once it has
        been published: the step goes into a new tensor that replaces it, and the old one lives on only until
        the replies still pointing at it are sent. Values double as the send buffer (3 copies of the share
        held, not 4), and no reply ever carries a half-written block."""
        j = action.block
        block, acc = self.blocks[j], self.acc[j]
        values = self.values[j].clone()
        acc.div_(self.weight_sum[j])
        n = block.num_params
        if n:
            param, opt = self.params[j], self.optimizers[j]
            param.data = values[:n]  # the optimizer keys its state by the Parameter object, not its storage
            param.grad = acc[:n]
            if self.clip is not None:
                self._clip(j, param.grad)
            for group in opt.param_groups:
                step = action.step if progress is None else progress
                group["lr"] = self.lr_at(step, len(action.contributors), action.quorum)
                if self.momentum_at is not None:  # also once it was lowered to 0: staleness may fall again
                    group["momentum"], lr_factor = self.momentum_at(action.staleness)
                    group["lr"] *= lr_factor
            opt.step()
            param.grad = None
        if n < block.size:
            values[n:].copy_(acc[n:])
        acc.zero_()
        self.weight_sum[j] = 0.0
        self.values[j] = values

    def _clip(self, j: int, grad: torch.Tensor) -> None:
        """Scale a gradient whose norm exceeds `clip` × the block's moving average of norms down to that bound.
        Once a model is sharp, one oversized stale step starts a run-away (each worse gradient, applied
        late, makes the next bigger); bounding the step relative to recent ones stops it without touching
        ordinary steps (adaptive clipping, as Brock et al. 2021 bound updates relative to a reference)."""
        norm = float(grad.norm())
        ref = self.grad_norm.get(j)
        if ref is not None and norm > self.clip * ref > 0:
            grad.mul_(self.clip * ref / norm)
            norm = self.clip * ref
            self.clipped += 1
        self.grad_norm[j] = norm if ref is None else ref + GRAD_NORM_SMOOTHING * (norm - ref)

    def state(self) -> dict:
        """Values and optimizer state of every block, by reference: serialise it before the next update
        (optimizer state such as momentum is updated in place; values are never written once published)."""
        return {
            "values": dict(self.values),
            "optimizers": {j: opt.state_dict() for j, opt in self.optimizers.items()},
            "grad_norm": dict(self.grad_norm),  # the clip's reference, so a restored server clips alike
        }

    def load(self, state: dict) -> None:
        """Take over a checkpoint's values, optimizer state and clip reference (absent in older checkpoints)."""
        self.grad_norm = dict(state.get("grad_norm", {}))
        for j, values in state["values"].items():
            if values.numel() != self.blocks[j].size:
                raise ValueError(f"checkpoint block {j} has {values.numel()} values, the layout {self.blocks[j].size}")
            self.values[j] = values.clone()
            if j in self.params:
                self.params[j].data = self.values[j][: self.blocks[j].num_params]
        for j, opt_state in state["optimizers"].items():
            self.optimizers[j].load_state_dict(copy.deepcopy(opt_state))  # it would share the tensors given

    def snapshot(self, block: int) -> torch.Tensor:
        """The block's current version, to send as is: never written again (see `apply`)."""
        return self.values[block]

    def nbytes(self) -> int:
        """Bytes held for values (which are also the send buffer), accumulators and optimizer state."""
        total = sum(v.nbytes + self.acc[j].nbytes for j, v in self.values.items())
        for opt in self.optimizers.values():
            for state in opt.state.values():
                total += sum(t.nbytes for t in state.values() if isinstance(t, torch.Tensor))
        return total
