"""The tensors behind a server's blocks: values (also sent as is), a real torch.optim optimizer, accumulators.

It performs what the server core decides (Accept, Apply); it never decides anything itself.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core.actions import Accept, Apply
from ..core.layout import Block, BlockLayout
from ..transport.messages import Payloads

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LRFunction = Callable[[int, int, int | None], float]  # (worker step, contributors, quorum in force) -> lr
MomentumFunction = Callable[[float], tuple[float, float]]  # staleness of accepted gradients -> (momentum, LR factor)


GRAD_NORM_SMOOTHING = 0.02  # weight of the newest update's gradient norm in a block's moving average


@dataclass(eq=False)
class _Group:
    """Blocks the server core moves together (its groups), held as one flat tensor each for values and
    accumulator, and one Parameter: an update of the group is a few tensor operations whatever its number of
    blocks. Blocks are concatenated in index order, and θ puts parameters before buffers, so the parameter
    slots of a group are one prefix of it (`num_params` values)."""

    blocks: tuple[int, ...]
    offsets: tuple[int, ...]  # where each block starts in the flat tensors
    sizes: tuple[int, ...]
    num_params: int
    values: torch.Tensor  # this version: never written again once published (copy-on-write)
    acc: torch.Tensor
    param: nn.Parameter | None

    def __post_init__(self) -> None:
        self.spans = {j: slice(o, o + n) for j, o, n in zip(self.blocks, self.offsets, self.sizes)}
        self.accs = {j: self.acc[span] for j, span in self.spans.items()}  # the accumulator is never replaced

    def span(self, j: int) -> slice:
        """Where block j lies in the group's flat tensors."""
        return self.spans[j]


class BlockStore:
    """One server's share of θ. Parameter slots are stepped by the optimizer with the averaged gradient;
    buffer slots (BatchNorm statistics) are set to the average of the contributed values.

    The blocks the core moves together (a server's whole share, while messages carry it whole) are one
    `_Group`: a push message's gradients are one add into its accumulator, an update one optimizer step of
    one flat Parameter, and a reply its values tensor as is. An update of some blocks of a group only splits
    it first, as the core's groups split (docs/results.md, "Straggler-free cost of blocks")."""

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
        self.weight_sum: dict[int, float] = dict.fromkeys(self.blocks, 0.0)
        self.lr_at = lr_at
        self.momentum_at = momentum_at
        self.clip = clip
        self.grad_norm: dict[int, float] = {}  # moving average of each block's (clipped) gradient norm
        self.clipped = 0
        self.make_optimizer = make_optimizer
        self.optimizer: torch.optim.Optimizer | None = None
        self.groups: dict[int, _Group] = {}  # block -> its group
        self._build(tuple(sorted(self.blocks)), [initial[j] for j in sorted(self.blocks)], None)

    # -- groups ------------------------------------------------------------------------------------------

    def _build(self, blocks: tuple[int, ...], values: Sequence[torch.Tensor], acc: torch.Tensor | None) -> _Group:
        """A group of `blocks` with these values (copied into one tensor) and accumulator (zero if None)."""
        sizes = tuple(self.blocks[j].size for j in blocks)
        offsets = (0, *itertools.accumulate(sizes[:-1])) if sizes else ()
        num_params = 0
        for j, offset in zip(blocks, offsets):
            if self.blocks[j].num_params:
                if offset != num_params:
                    raise ValueError(f"block {j}'s parameters do not follow the group's: θ puts parameters first")
                num_params = offset + self.blocks[j].num_params
        flat = torch.cat(list(values)) if values else torch.zeros(0)
        param = nn.Parameter(flat[:num_params]) if num_params else None
        group = _Group(blocks, offsets, sizes, num_params, flat, torch.zeros_like(flat) if acc is None else acc, param)
        for j in blocks:
            self.groups[j] = group
        if param is not None:
            if self.optimizer is None:
                self.optimizer = self.make_optimizer([param])
            else:
                self.optimizer.param_groups[0]["params"].append(param)
        return group

    def _split(self, group: _Group, blocks: Sequence[int]) -> _Group:
        """The group of exactly `blocks` (all in `group`): `group` itself, or a new one they are taken out
        into, with their values, pending gradients and optimizer state (the rest keep theirs)."""
        if len(blocks) == len(group.blocks):
            return group
        taken = set(blocks)
        parts = [tuple(j for j in group.blocks if j in taken), tuple(j for j in group.blocks if j not in taken)]
        state = self._param_state(group)
        if group.param is not None:
            assert self.optimizer is not None
            params = self.optimizer.param_groups[0]["params"]
            params[:] = [p for p in params if p is not group.param]  # by identity: == on tensors compares values
            self.optimizer.state.pop(group.param, None)
        made = []
        for part in parts:
            spans = [group.span(j) for j in part]
            new = self._build(part, [group.values[s] for s in spans], torch.cat([group.acc[s] for s in spans]))
            if new.param is not None and state:
                assert self.optimizer is not None
                self.optimizer.state[new.param] = _cut_state(state, group, part)
            made.append(new)
        return made[0]

    def _pieces(self, action: Apply) -> list[tuple[Apply, _Group]]:
        """The update of `action` by group: the group of exactly its blocks (split out if they are a part of
        one), or, where they lie in several (a restored store), each one's part."""
        group = self.groups[action.blocks[0]]
        if tuple(action.blocks) == group.blocks:
            return [(action, group)]
        by_group: dict[int, list[int]] = {}
        for j in action.blocks:
            by_group.setdefault(id(self.groups[j]), []).append(j)
        pieces = []
        for blocks in by_group.values():
            part = action if len(by_group) == 1 else replace(action, blocks=tuple(blocks))
            pieces.append((part, self._split(self.groups[blocks[0]], blocks)))
        return pieces

    def _param_state(self, group: _Group) -> dict:
        return dict(self.optimizer.state.get(group.param, {})) if self.optimizer and group.param is not None else {}

    # -- the core's actions --------------------------------------------------------------------------------

    def accept(self, action: Accept, payload: torch.Tensor) -> None:
        """One block's accepted gradient (`action` names one block)."""
        self.accept_many([(action.blocks, action.weight, [payload])])

    def accept_many(self, accepted: list[tuple[Sequence[int], float, Sequence[torch.Tensor]]]) -> None:
        """Add each (blocks, weight, payloads), times its weight, to those blocks' accumulators, in order: a
        whole group's gradients as one frame (`Payloads.flat`, in the group's order) are one add, others one
        fused add per entry."""
        for blocks, weight, payloads in accepted:
            group = self.groups[blocks[0]]
            flat = getattr(payloads, "flat", None)
            if flat is not None and tuple(blocks) == group.blocks:
                group.acc.add_(flat, alpha=weight)
            else:
                targets = [self.groups[j].accs[j] for j in blocks]
                if len(set(blocks)) < len(blocks):  # one block twice: the fused add needs distinct targets
                    for target, payload in zip(targets, payloads):
                        target.add_(payload, alpha=weight)
                else:
                    torch._foreach_add_(targets, list(payloads), alpha=weight)
            for j in blocks:
                self.weight_sum[j] += weight

    def apply(self, action: Apply, progress: float | None = None) -> None:
        self.apply_many([action], progress)

    def apply_many(self, actions: list[Apply], progress: float | None = None) -> None:
        """Average, then step a fresh copy of the values (copy-on-write). `progress` (average worker steps so
        far) drives the LR schedule; without it, the contributors' step does.

        A reply hands a group's values tensor to ZeroMQ without copying, so a version is never written once
        it has been published: the step goes into a new tensor that replaces it, and the old one lives on
        only until the replies still pointing at it are sent. Values double as the send buffer (3 copies of
        the share held, not 4), and no reply ever carries a half-written block."""
        blocks = [j for a in actions for j in a.blocks]
        if len(set(blocks)) < len(blocks):  # one block twice: in order, one at a time
            for action in actions:
                self.apply_many([action], progress)
            return
        pieces = [piece for a in actions for piece in self._pieces(a)]
        groups = [group for _, group in pieces]
        for group in groups:
            sums = [self.weight_sum[j] for j in group.blocks]
            if min(sums) == max(sums):
                group.acc.div_(sums[0])
            else:
                torch._foreach_div_([group.acc[group.span(j)] for j in group.blocks], sums)
            fresh = group.values.clone()
            if group.param is not None:  # the optimizer keys its state by the Parameter object, not its storage
                group.param.data = fresh[: group.num_params]
            group.values = fresh
        if self.clip is not None:
            self._clip_many([j for j in blocks if self.blocks[j].num_params])
        by_hyper: dict[tuple, list[_Group]] = defaultdict(list)
        for action, group in pieces:
            if group.param is not None:
                by_hyper[self._hyper(action, progress)].append(group)
        for hyper, batch in by_hyper.items():
            self._step(batch, *hyper)
        for group in groups:
            if group.num_params < group.values.numel():  # buffer slots take the average of what was sent
                group.values[group.num_params :].copy_(group.acc[group.num_params :])
            group.acc.zero_()
            for j in group.blocks:
                self.weight_sum[j] = 0.0

    def _hyper(self, action: Apply, progress: float | None) -> tuple[float, float | None]:
        """The learning rate and momentum an update takes."""
        lr = self.lr_at(action.step if progress is None else progress, len(action.contributors), action.quorum)
        momentum = None
        if self.momentum_at is not None:  # also once it was lowered to 0: staleness may fall again
            momentum, lr_factor = self.momentum_at(action.staleness)
            lr *= lr_factor
        return lr, momentum

    def _step(self, groups: list[_Group], lr: float, momentum: float | None) -> None:
        """One optimizer step over `groups` (their averaged gradients), every other group left as it is."""
        assert self.optimizer is not None
        for group in groups:
            assert group.param is not None
            group.param.grad = group.acc[: group.num_params]
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
            if momentum is not None:
                param_group["momentum"] = momentum
        self.optimizer.step()
        for group in groups:
            assert group.param is not None
            group.param.grad = None

    def _clip_many(self, blocks: list[int]) -> None:
        grads = [self.groups[j].acc[self.groups[j].span(j)][: self.blocks[j].num_params] for j in blocks]
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

    # -- replies, checkpoints --------------------------------------------------------------------------------

    def snapshot(self, block: int) -> torch.Tensor:
        """The block's current version, to send as is: never written again (see `apply_many`)."""
        group = self.groups[block]
        return group.values[group.span(block)]

    def reply(self, blocks: Sequence[int]) -> Sequence[torch.Tensor]:
        """The current values of `blocks` for a reply: a whole group's values tensor as is (`Payloads`, no
        copy, in the group's order), else a snapshot per block."""
        group = self.groups[blocks[0]]
        if tuple(blocks) == group.blocks:
            return Payloads(group.values, group.sizes)
        return [self.snapshot(j) for j in blocks]

    def block_state(self, block: int) -> dict:
        """The optimizer's state of one block's parameters (its slice of its group's)."""
        group = self.groups[block]
        state = self._param_state(group)
        return _cut_state(state, group, (block,)) if state else {}

    def state(self) -> dict:
        """Values and optimizer state of every block, by reference: serialise it before the next update
        (optimizer state such as momentum is updated in place; values are never written once published)."""
        return {
            "values": {j: self.snapshot(j) for j in self.blocks},
            "optimizer_state": {
                j: st for j in self.blocks if self.blocks[j].num_params and (st := self.block_state(j))
            },
            "grad_norm": dict(self.grad_norm),  # the clip's reference, so a restored server clips alike
        }

    def load(self, state: dict) -> None:
        """Take over a checkpoint's values, optimizer state and clip reference (absent in older checkpoints).
        Blocks whose optimizer states can be joined (the same entries, the same step counts) form one group."""
        self.grad_norm = dict(state.get("grad_norm", {}))
        values = state["values"]
        for j, v in values.items():
            if v.numel() != self.blocks[j].size:
                raise ValueError(f"checkpoint block {j} has {v.numel()} values, the layout {self.blocks[j].size}")
        per_block = _optimizer_state(state)
        order = tuple(sorted(self.blocks))
        current = [values[j] if j in values else self.snapshot(j) for j in order]
        if self.optimizer is not None:
            self.optimizer.param_groups[0]["params"].clear()
            self.optimizer.state.clear()
        self.groups = {}
        for blocks in _joinable(order, per_block, self.blocks):
            group = self._build(blocks, [current[order.index(j)] for j in blocks], None)
            if group.param is not None and any(j in per_block for j in blocks):
                assert self.optimizer is not None
                self.optimizer.state[group.param] = _join_state([per_block[j] for j in blocks if j in per_block])

    def nbytes(self) -> int:
        """Bytes held for values (which are also the send buffer), accumulators and optimizer state."""
        unique = {id(g): g for g in self.groups.values()}.values()
        total = sum(g.values.nbytes + g.acc.nbytes for g in unique)
        for state in self.optimizer.state.values() if self.optimizer is not None else ():
            total += sum(t.nbytes for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0)
        return total


def _cut_state(state: dict, group: _Group, blocks: Sequence[int]) -> dict:
    """The optimizer state of `blocks`' parameters, cut from their group's (its per-value tensors sliced and
    joined in the blocks' order, scalars such as Adam's step count as they are)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == group.num_params:
            spans = [group.span(j) for j in blocks]
            pieces = [value[s.start : min(s.stop, group.num_params)] for s in spans if s.start < group.num_params]
            out[key] = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        else:
            out[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    return out


def _join_state(states: list[dict]) -> dict:
    """One group's optimizer state from its blocks' (per-value tensors joined, scalars from the first)."""
    out = {}
    for key, value in states[0].items():
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            out[key] = torch.cat([s[key] for s in states]).clone()
        else:
            out[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    return out


def _joinable(order: tuple[int, ...], per_block: dict[int, dict], blocks: dict[int, Block]) -> list[tuple[int, ...]]:
    """Groups for a restored store: all blocks together when their parameters' optimizer states agree in form
    (all present with the same entries and scalars, or all absent), else one group per block."""
    stateful = [j for j in order if blocks[j].num_params]
    states = [per_block.get(j) for j in stateful]
    if all(s is None for s in states):
        return [order]
    if all(s is not None for s in states) and all(_same_form(states[0], s) for s in states):  # type: ignore[arg-type]
        return [order]
    return [(j,) for j in order]


def _same_form(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) and x.dim() == 1:
            continue
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _optimizer_state(checkpoint: dict) -> dict[int, dict]:
    """Each block's optimizer state (momentum, Adam's moments) in a checkpoint; older checkpoints held one
    optimizer's `state_dict()` per block, whose only parameter is its entry 0."""
    if "optimizer_state" in checkpoint:
        return checkpoint["optimizer_state"]
    return {j: doc["state"][0] for j, doc in checkpoint.get("optimizers", {}).items() if 0 in doc["state"]}
