"""The tensors behind a server's blocks: values (also sent as is), a real torch.optim optimizer, accumulators.

It performs what the server core decides (Accept, Apply); it never decides anything itself.
"""

from __future__ import annotations

import copy
from collections import defaultdict
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
    buffer slots (BatchNorm statistics) are set to the average of the contributed values.

    The blocks a message moves together are worked on together: one multi-tensor (`torch._foreach_*`)
    accumulation per push message and one optimizer step per batch of updates that share their learning rate
    and momentum, so the tensor work of a round does not grow by a Python call per block (docs/results.md,
    "Straggler-free cost of blocks")."""

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
            self.acc[j] = torch.zeros_like(values)
            self.weight_sum[j] = 0.0
        # one optimizer over every block: a step moves the parameters that have a gradient and skips the rest
        # (torch.optim's rule), so a batch of blocks is one multi-tensor step, not one step per block
        self.optimizer = make_optimizer(list(self.params.values())) if self.params else None

    def accept(self, action: Accept, payload: torch.Tensor) -> None:
        """One block's accepted gradient (`action` names one block)."""
        self.accept_many([(action.block, action.weight, payload)])

    def accept_many(self, accepted: list[tuple[int, float, torch.Tensor]]) -> None:
        """Add each (block, weight, payload), times its weight, to its block's accumulator: one fused add per
        weight."""
        by_weight: dict[float, list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for j, weight, payload in accepted:
            by_weight[weight].append((j, payload))
        for weight, items in by_weight.items():
            blocks = [j for j, _ in items]
            if len(set(blocks)) < len(blocks):  # one block twice: the fused add needs distinct accumulators
                for j, payload in items:
                    self.acc[j].add_(payload, alpha=weight)
            else:
                torch._foreach_add_([self.acc[j] for j in blocks], [p for _, p in items], alpha=weight)
            for j in blocks:
                self.weight_sum[j] += weight

    def apply(self, action: Apply, progress: float | None = None) -> None:
        self.apply_many([action], progress)

    def apply_many(self, actions: list[Apply], progress: float | None = None) -> None:
        """Average, then step a fresh copy of the values (copy-on-write). `progress` (average worker steps so
        far) drives the LR schedule; without it, the contributors' step does.

        A reply of one block hands its values tensor to ZeroMQ without copying (a reply of several joins them
        into one frame first), so a version is never written once it has been published: the step goes into a
        new tensor that replaces it, and the old one lives on only until the replies still pointing at it are
        sent. Values double as the send buffer (3 copies of the share
        held, not 4), and no reply ever carries a half-written block."""
        blocks = [j for a in actions for j in a.blocks]
        if len(set(blocks)) < len(blocks):  # one block twice: in order, one at a time
            for action in actions:
                self.apply_many([action], progress)
            return
        fresh = {j: self.values[j].clone() for j in blocks}
        accs = [self.acc[j] for j in blocks]
        torch._foreach_div_(accs, [self.weight_sum[j] for j in blocks])
        stepped = [j for j in blocks if self.blocks[j].num_params]
        for j in stepped:  # the optimizer keys its state by the Parameter object, not its storage
            self.params[j].data = fresh[j][: self.blocks[j].num_params]
        if self.clip is not None and stepped:
            self._clip_many(stepped)
        for hyper, batch in self._by_hyper(actions, progress).items():
            self._step(batch, *hyper)
        for j in blocks:
            n = self.blocks[j].num_params
            if n < self.blocks[j].size:
                fresh[j][n:].copy_(self.acc[j][n:])
        torch._foreach_zero_(accs)
        for j in blocks:
            self.weight_sum[j] = 0.0
            self.values[j] = fresh[j]

    def _by_hyper(self, actions: list[Apply], progress: float | None) -> dict[tuple, list[int]]:
        """The blocks with parameters of a batch, grouped by the learning rate and momentum their updates take."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for action in actions:
            blocks = [j for j in action.blocks if self.blocks[j].num_params]
            if not blocks:
                continue
            lr = self.lr_at(action.step if progress is None else progress, len(action.contributors), action.quorum)
            momentum = None
            if self.momentum_at is not None:  # also once it was lowered to 0: staleness may fall again
                momentum, lr_factor = self.momentum_at(action.staleness)
                lr *= lr_factor
            groups[(lr, momentum)].extend(blocks)
        return groups

    def _step(self, blocks: list[int], lr: float, momentum: float | None) -> None:
        """One optimizer step over `blocks` (their averaged gradients), every other block left as it is."""
        assert self.optimizer is not None
        params = [self.params[j] for j in blocks]
        for j, param in zip(blocks, params):
            param.grad = self.acc[j][: self.blocks[j].num_params]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if momentum is not None:
                group["momentum"] = momentum
        self.optimizer.step()
        for param in params:
            param.grad = None

    def _clip_many(self, blocks: list[int]) -> None:
        grads = [self.acc[j][: self.blocks[j].num_params] for j in blocks]
        norms = torch.stack(torch._foreach_norm(grads)).tolist()
        for j, grad, norm in zip(blocks, grads, norms):
            self._clip(j, grad, norm)

    def _clip(self, j: int, grad: torch.Tensor, norm: float) -> None:
        """Scale a gradient whose norm exceeds `clip` × the block's moving average of norms down to that bound.
        Once a model is sharp, one oversized stale step starts a run-away (each worse gradient, applied
        late, makes the next bigger); bounding the step relative to recent ones stops it without touching
        ordinary steps (adaptive clipping, as Brock et al. 2021 bound updates relative to a reference)."""
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
            "optimizer_state": {
                j: self.optimizer.state[p] for j, p in self.params.items() if p in self.optimizer.state
            },
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
        for j, param_state in _optimizer_state(state).items():
            self.optimizer.state[self.params[j]] = copy.deepcopy(param_state)  # it would share the tensors given

    def snapshot(self, block: int) -> torch.Tensor:
        """The block's current version, to send as is: never written again (see `apply`)."""
        return self.values[block]

    def nbytes(self) -> int:
        """Bytes held for values (which are also the send buffer), accumulators and optimizer state."""
        total = sum(v.nbytes + self.acc[j].nbytes for j, v in self.values.items())
        for state in self.optimizer.state.values() if self.optimizer is not None else ():
            total += sum(t.nbytes for t in state.values() if isinstance(t, torch.Tensor))
        return total


def _optimizer_state(checkpoint: dict) -> dict[int, dict]:
    """Each block's optimizer state (momentum, Adam's moments) in a checkpoint; older checkpoints held one
    optimizer's `state_dict()` per block, whose only parameter is its entry 0."""
    if "optimizer_state" in checkpoint:
        return checkpoint["optimizer_state"]
    return {j: doc["state"][0] for j, doc in checkpoint.get("optimizers", {}).items() if 0 in doc["state"]}
