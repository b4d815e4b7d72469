"""Deterministic block layout: how θ is flattened, cut into blocks and spread over servers.

Every rank derives the layout from the model alone (names, shapes, dtypes), so two ranks that built the
same model agree without talking; the hash lets a server refuse a worker that built a different one
(BytePS PR #112: workers whose tensors were declared in another order got other keys and hung).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Protocol, TypeVar

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class _PerBlock(Protocol):
    @property
    def block(self) -> int: ...


Item = TypeVar("Item", bound=_PerBlock)
V = TypeVar("V")


MESSAGE_BYTES = 4 << 20  # a coalesced message stops growing here (BytePS' partition size, the default block)


class Cut(NamedTuple):
    """One message of a cut: its server, the positions of its items among those cut, their blocks, and the
    blocks' payload bytes (0 when the cutter has no sizes)."""

    server: int
    positions: tuple[int, ...]
    blocks: tuple[int, ...]
    nbytes: int
    span: slice | None = None  # the positions as a slice, when they are evenly spaced (blocks dealt in turn)

    def pick(self, values: Sequence[V]) -> tuple[V, ...]:
        """The values at this message's positions."""
        if self.span is not None:
            return tuple(values[self.span])
        return tuple(values[i] for i in self.positions)


class MessageCutter:
    """How per-block requests travel: per server, messages carrying its blocks in their order (`coalesce`), or
    one message per block. `owner[j]` is the server of block j. With `nbytes[j]` (the payload of block j), a
    message takes blocks until it would pass `max_bytes`: small blocks share one message, large ones keep a
    message each, so a server's inbox never holds a whole share at once. The runtime and the simulator both
    cut messages here, so the simulator counts what the wire carries.

    A worker asks for the same blocks step after step, so each cut is kept, by its blocks (a handful of
    distinct sets: all blocks, one server's after a restart)."""

    CACHED = 64  # distinct block sets kept; past this the cache starts afresh

    def __init__(
        self, owner: Sequence[int], coalesce: bool, nbytes: Sequence[int] | None = None, max_bytes: int = MESSAGE_BYTES
    ):
        self.owner, self.coalesce, self.max_bytes = tuple(owner), coalesce, max_bytes
        self.nbytes = tuple(nbytes) if nbytes is not None else (0,) * len(self.owner)
        self._cuts: dict[tuple[int, ...], list[Cut]] = {}

    def cut(self, blocks: Sequence[int]) -> list[Cut]:
        """The messages that carry `blocks`, servers in ascending order."""
        key = blocks if isinstance(blocks, tuple) else tuple(blocks)
        cut = self._cuts.get(key)
        if cut is None:
            if len(self._cuts) >= self.CACHED:
                self._cuts.clear()
            cut = self._cuts[key] = [self._message(server, part, key) for server, part in self._positions(key)]
        return cut

    def _positions(self, blocks: tuple[int, ...]) -> list[tuple[int, list[int]]]:
        owner, sizes = self.owner, self.nbytes
        if not self.coalesce:
            return [(owner[j], [i]) for i, j in enumerate(blocks)]
        groups: dict[int, list[list[int]]] = defaultdict(lambda: [[]])
        filled: dict[int, int] = defaultdict(int)
        for i, j in enumerate(blocks):
            server = owner[j]
            parts = groups[server]
            if parts[-1] and filled[server] + sizes[j] > self.max_bytes:
                parts.append([])
                filled[server] = 0
            parts[-1].append(i)
            filled[server] += sizes[j]
        return [(server, part) for server in sorted(groups) for part in groups[server]]

    def _message(self, server: int, positions: list[int], blocks: tuple[int, ...]) -> Cut:
        mine = tuple(blocks[i] for i in positions)
        step = positions[1] - positions[0] if len(positions) > 1 else 1
        spaced = step > 0 and all(b - a == step for a, b in zip(positions, positions[1:]))
        span = slice(positions[0], positions[-1] + 1, step) if spaced else None
        return Cut(server, tuple(positions), mine, sum(self.nbytes[j] for j in mine), span)

    def messages(self, items: Sequence[Item]) -> list[tuple[int, Sequence[Item]]]:
        """`items` (per-block requests or replies, or a worker's columns of them: Pushes, Pulls) cut into
        messages: (server, its items) per message."""
        part = getattr(items, "part", None)
        if part is not None:  # columns: cut without making an object per block
            return [(cut.server, part(cut)) for cut in self.cut(items.blocks)]  # type: ignore[attr-defined]
        return [(cut.server, [items[i] for i in cut.positions]) for cut in self.cut([x.block for x in items])]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of θ: a trainable parameter or a floating-point buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    is_buffer: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Block:
    """A contiguous slice [start, stop) of flat θ; parameters come before buffers in θ, so a block holds
    at most one parameter part followed by one buffer part."""

    index: int
    start: int
    stop: int
    param_stop: int  # flat index where this block's parameter part ends (== start if it has none)
    server: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def num_params(self) -> int:
        """Length of the optimizer-stepped part; the rest (buffers) is averaged."""
        return self.param_stop - self.start


@dataclass(frozen=True)
class BlockLayout:
    tensors: tuple[TensorSpec, ...]
    blocks: tuple[Block, ...]
    num_servers: int
    digest: str

    @property
    def total(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors if not t.is_buffer)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @cached_property
    def owners(self) -> tuple[int, ...]:
        """The server of each block, by block index (computed once: message cutting reads it every step)."""
        return tuple(b.server for b in self.blocks)

    @cached_property
    def block_bytes(self) -> tuple[int, ...]:
        """Each block's payload on the wire (float32), by block index."""
        return tuple(b.size * 4 for b in self.blocks)

    def blocks_of(self, server: int) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.server == server)

    def bytes_per_server(self, itemsize: int = 4) -> list[int]:
        load = [0] * self.num_servers
        for b in self.blocks:
            load[b.server] += b.size * itemsize
        return load


def order_tensors(params: Sequence[TensorSpec], buffers: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
    """Parameters first (in declaration order), then floating-point buffers; integer buffers
    (e.g. BatchNorm's num_batches_tracked) are not part of θ."""
    ps = [TensorSpec(t.name, tuple(t.shape), t.dtype, False) for t in params]
    bs = [TensorSpec(t.name, tuple(t.shape), t.dtype, True) for t in buffers if t.dtype in FLOAT_DTYPES]
    return tuple(ps + bs)


def resolve_num_blocks(requested: int | None, total: int, num_servers: int, target_bytes: int = 4 << 20) -> int:
    """Default B: enough ~4 MiB blocks (BytePS' partition size) and at least two per server, so partial
    pull has something to choose from; never more blocks than elements."""
    if requested is not None:
        return requested
    by_size = math.ceil(total * 4 / target_bytes)
    blocks = max(1, min(total, max(2 * num_servers, by_size)))
    while blocks > num_servers and math.ceil(total / blocks) * (blocks - 1) >= total:
        blocks -= 1  # equal-size cuts would leave the last block empty
    return blocks


def build_layout(tensors: Sequence[TensorSpec], num_blocks: int, num_servers: int) -> BlockLayout:
    """Cut flat θ into `num_blocks` equal slices (the last may be smaller) and assign them to servers
    by bytes, largest first to the least-loaded server (ties to the lowest id): deterministic."""
    if num_servers < 1:
        raise ValueError(f"num_servers must be >= 1, got {num_servers}")
    total = sum(t.numel for t in tensors)
    if total == 0:
        raise ValueError("the model has no floating-point parameters: nothing to train")
    if not num_servers <= num_blocks <= total:
        raise ValueError(
            f"blocks={num_blocks} must be between servers={num_servers} and the number of elements {total}"
        )
    n_params = sum(t.numel for t in tensors if not t.is_buffer)
    length = math.ceil(total / num_blocks)
    bounds = [(i * length, min((i + 1) * length, total)) for i in range(num_blocks)]
    if bounds[-1][0] >= total:
        raise ValueError(f"blocks={num_blocks} leaves empty blocks for {total} elements: use fewer blocks")
    heap = [(0, s) for s in range(num_servers)]
    owner: dict[int, int] = {}
    for i in sorted(range(num_blocks), key=lambda i: (-(bounds[i][1] - bounds[i][0]), i)):
        load, server = heapq.heappop(heap)
        owner[i] = server
        heapq.heappush(heap, (load + bounds[i][1] - bounds[i][0], server))
    blocks = tuple(
        Block(i, start, stop, min(max(n_params, start), stop), owner[i]) for i, (start, stop) in enumerate(bounds)
    )
    return BlockLayout(tuple(tensors), blocks, num_servers, _digest(tensors, blocks, num_servers))


def _digest(tensors: Sequence[TensorSpec], blocks: Sequence[Block], num_servers: int) -> str:
    doc = {
        "tensors": [[t.name, list(t.shape), t.dtype, t.is_buffer] for t in tensors],
        "blocks": [[b.start, b.stop, b.server] for b in blocks],
        "servers": num_servers,
    }
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()[:16]
