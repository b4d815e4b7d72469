"""Wire format: one typed dataclass per message kind, sent as a msgpack header frame and, for `Push` and
`Blocks`, one raw float32 payload frame holding every block's values one after the other.

Blocks travel coalesced: a push, a pull and a reply carry several blocks of one server as columns of one
header (`blocks`, `bases`, ... of equal length, and `n`: each block's value count, the offsets into the
payload) plus that one payload frame, so a worker's step costs one push and one pull message per server
whatever the block count, and a message costs two ZeroMQ frames whatever it carries (ps-lite and BytePS
batch keys the same way). A message of one block is the uncoalesced form (`cluster.coalesce: false`).

Every incoming message is checked here before any role sees it: `decode` returns one of the message classes
with every field of its declared type, or raises `BadMessage` with a reason the caller counts and logs.
Payloads are decoded as views of the received frames (no copy).
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union, get_type_hints

import msgpack
import numpy as np
import torch

from ..errors import WeaksyncError

WIRE_DTYPE = np.float32
MAX_HEADER_BYTES = 64 << 10  # a coalesced header lists a few ints per block: ~4,000 blocks
PAYLOAD_SIZES = "n"  # header column of a payload message: each block's value count


class Payloads(Sequence[torch.Tensor]):
    """Per-block tensors that are consecutive slices of one flat tensor, `flat` (a decoded message's payload
    frame, a server group's values tensor or blocks joined for one reply, a worker's gathered push): it is sent as
    is and checked in one pass, and its `sizes` say where the blocks are. The per-block views are made only
    when a block is read alone: a worker installs a whole reply from `flat`, so at 128 blocks it never pays
    for 128 tensor objects."""

    __slots__ = ("flat", "sizes", "_parts")

    def __init__(self, flat: torch.Tensor, sizes: Sequence[int], parts: Sequence[torch.Tensor] | None = None):
        self.flat = flat
        self.sizes = list(sizes)
        self._parts = None if parts is None else tuple(parts)

    @classmethod
    def of(cls, parts: Sequence[torch.Tensor], flat: torch.Tensor) -> Payloads:
        return cls(flat, [p.numel() for p in parts], parts)

    @property
    def parts(self) -> tuple[torch.Tensor, ...]:
        if self._parts is None:
            self._parts = tuple(torch.split(self.flat, self.sizes))
        return self._parts

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index):  # type: ignore[override]  # an int or a slice, as a tuple's
        return self.parts[index]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.parts)


class BadMessage(WeaksyncError, ValueError):
    """A message that does not follow the wire format; never fatal to the receiver."""


# -- the messages --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Worker → server: register, with the layout digest every rank must share and the worker's process."""

    KIND: ClassVar[str] = "hello"
    worker: int
    digest: str
    pid: int


@dataclass(frozen=True, slots=True)
class Welcome:
    """Server → worker: registered; `clock` is where a resumed run or a rejoining worker goes on from."""

    KIND: ClassVar[str] = "welcome"
    server: int
    digest: str
    clock: int = 0


@dataclass(frozen=True, slots=True)
class Refuse:
    KIND: ClassVar[str] = "refuse"
    reason: str


@dataclass(frozen=True, slots=True)
class Push:
    """Worker → server: the gradients of step `step` for blocks `blocks` of this server, block `blocks[i]`
    computed on version `bases[i]`; `sent_at` (wall clock) measures the link's one-way delay."""

    KIND: ClassVar[str] = "push"
    worker: int
    step: int
    blocks: tuple[int, ...]
    bases: tuple[int, ...]
    grads: tuple[torch.Tensor, ...]
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class Pull:
    """Worker → server: send block `blocks[i]` once its version exceeds `wants[i]` (now, if it already does);
    `clock` is the worker's completed steps."""

    KIND: ClassVar[str] = "pull"
    worker: int
    clock: int
    blocks: tuple[int, ...]
    wants: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Blocks:
    """Server → worker or evaluator: the values of blocks `blocks`, block `blocks[i]` at `versions[i]`."""

    KIND: ClassVar[str] = "blocks"
    blocks: tuple[int, ...]
    versions: tuple[int, ...]
    values: tuple[torch.Tensor, ...]


@dataclass(frozen=True, slots=True)
class Bye:
    KIND: ClassVar[str] = "bye"
    worker: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    KIND: ClassVar[str] = "hb"
    worker: int


@dataclass(frozen=True, slots=True)
class Peek:
    """Evaluator → server: send blocks `blocks` as they are now, outside the protocol."""

    KIND: ClassVar[str] = "peek"
    blocks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    """Launcher → server: worker `worker`'s process `pid` died (a restarted process has another pid)."""

    KIND: ClassVar[str] = "leave"
    worker: int
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    KIND: ClassVar[str] = "stop"


@dataclass(frozen=True, slots=True)
class Done:
    KIND: ClassVar[str] = "done"


Message = Union[Hello, Welcome, Refuse, Push, Pull, Blocks, Bye, Heartbeat, Peek, Leave, Stop, Done]

# attribute -> header key: short names for the fields every message repeats
_WIRE_KEYS = {"worker": "w", "blocks": "j", "bases": "u", "server": "s", "versions": "v", "sent_at": "ts"}


@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    types: tuple[type, ...]
    required: bool
    column: bool  # a tuple: one entry per block the message carries


@dataclass(frozen=True)
class _Kind:
    cls: type
    fields: tuple[_Field, ...]
    payload: str | None  # the attribute whose tensors travel as the payload frame after the header


def _describe(cls: type) -> _Kind:
    hints = get_type_hints(cls)
    fields: list[_Field] = []
    payload = None
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        column = typing.get_origin(hint) is tuple
        if column:
            hint = typing.get_args(hint)[0]
        if hint is torch.Tensor:
            payload = f.name
            continue
        types = tuple(t for t in getattr(hint, "__args__", (hint,)) if t is not type(None))
        required = f.default is dataclasses.MISSING
        fields.append(_Field(f.name, _WIRE_KEYS.get(f.name, f.name), types, required, column))
    return _Kind(cls, tuple(fields), payload)


KINDS: dict[str, _Kind] = {cls.KIND: _describe(cls) for cls in Message.__args__}


def encode(msg: Message) -> list[Any]:
    """Frames for `send_multipart(..., copy=False)`: the payloads go out as views of the tensors, so the
    caller must not modify them afterwards (servers send immutable snapshots, workers fresh gradients)."""
    kind = KINDS[msg.KIND]
    header: dict[str, Any] = {"k": msg.KIND}
    for f in kind.fields:
        value = getattr(msg, f.name)
        if value is not None:
            header[f.key] = list(value) if f.column else value
    if kind.payload is None:
        return [msgpack.packb(header)]
    parts = getattr(msg, kind.payload)
    if isinstance(parts, Payloads):  # one frame already: its blocks are slices of it
        if parts.flat.dtype != torch.float32 or parts.flat.dim() != 1:
            raise ValueError("payloads must be 1-D float32 tensors")
        header[PAYLOAD_SIZES] = parts.sizes
        return [msgpack.packb(header), memoryview(parts.flat.contiguous().numpy()).cast("B")]
    if any(p.dtype != torch.float32 or p.dim() != 1 for p in parts):
        raise ValueError("payloads must be 1-D float32 tensors")
    header[PAYLOAD_SIZES] = [p.numel() for p in parts]
    # one copy into a single frame: cheaper than a ZeroMQ frame per block from 2 blocks on
    flat = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)
    return [msgpack.packb(header), memoryview(flat.numpy()).cast("B")]


def decode(frames: Sequence[Any]) -> Message:
    """Parse and validate frames (bytes or zmq.Frame); raise BadMessage naming what is wrong."""
    if not frames:
        raise BadMessage("empty message")
    raw = _buffer(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise BadMessage(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise BadMessage(f"header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict) or not isinstance(header.get("k"), str):
        raise BadMessage("header must be a map with a string 'k'")
    name = header["k"]
    kind = KINDS.get(name)
    if kind is None:
        raise BadMessage(f"unknown message kind '{name}'")
    values: dict[str, Any] = {}
    rows: int | None = None  # the length every column shares: the number of blocks carried
    for f in kind.fields:
        value = header.get(f.key)
        if value is None and not f.required:
            continue
        if f.column:
            if not isinstance(value, list) or not _all_are(value, f.types):
                raise BadMessage(f"'{name}' needs field '{f.key}' as a list of {f.types[0].__name__}")
            if rows is not None and len(value) != rows:
                raise BadMessage(f"'{name}' lists of unequal length ({rows} and {len(value)} in '{f.key}')")
            if not value:
                raise BadMessage(f"'{name}' carries no blocks")
            rows = len(value)
            value = tuple(value)
        elif not _is(value, f.types):
            raise BadMessage(f"'{name}' needs field '{f.key}' of type {f.types[0].__name__}")
        values[f.name] = value
    expected_frames = 1 if kind.payload is None else 2
    if len(frames) != expected_frames:
        raise BadMessage(f"'{name}' has {len(frames)} frames, expected {expected_frames}")
    if kind.payload is not None:
        values[kind.payload] = _split_payload(name, header.get(PAYLOAD_SIZES), rows or 0, frames[1])
    return kind.cls(**values)


def _split_payload(name: str, sizes: Any, rows: int, frame: Any) -> Payloads:
    """The payload frame as one view per block, cut at the offsets the header's `n` column gives."""
    if not isinstance(sizes, list) or len(sizes) != rows or not _all_are(sizes, (int,)) or min(sizes, default=0) < 0:
        raise BadMessage(f"'{name}' needs field '{PAYLOAD_SIZES}' as a list of {rows} value counts >= 0")
    flat = _payload(frame)
    if flat.numel() != sum(sizes):
        raise BadMessage(f"'{name}' payload holds {flat.numel()} values, its header lists {sum(sizes)}")
    return Payloads(flat, sizes)


def _all_are(values: list, types: tuple[type, ...]) -> bool:
    """Every entry of a column is of `types` (no bool posing as an int). For int columns, the common case
    of a long coalesced header, one exact type test per entry: msgpack makes exactly int or bool."""
    if types == (int,):
        return all(type(v) is int for v in values)
    return all(_is(v, types) for v in values)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def _buffer(frame: Any) -> memoryview:
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame)


def _payload(frame: Any) -> torch.Tensor:
    """A view of the frame as float32 values (no copy)."""
    view = _buffer(frame)
    if view.nbytes % WIRE_DTYPE().itemsize:
        raise BadMessage(f"payload of {view.nbytes} bytes is not a whole number of float32 values")
    if not view.nbytes:
        return torch.empty(0, dtype=torch.float32)
    with warnings.catch_warnings():  # the frame is read-only; receivers only read from it
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(view, dtype=torch.float32)


def payload_nbytes(payloads: Sequence[torch.Tensor]) -> int:
    """Bytes of a message's payloads, without making per-block views of a `Payloads`."""
    return payloads.flat.nbytes if isinstance(payloads, Payloads) else sum(p.nbytes for p in payloads)


def payload_problem(payload: torch.Tensor | None, expected_size: int) -> str | None:
    """The server's check of a gradient before it may touch the optimizer: size and finiteness."""
    if payload is None:
        return "missing payload"
    if payload.numel() != expected_size:
        return f"payload has {payload.numel()} values, block needs {expected_size}"
    # one pass without allocating: a finite sum means every value is finite (NaN and ±inf propagate);
    # only when it is not (or it overflowed) is the exact element-wise check needed
    if not math.isfinite(float(payload.sum())) and not bool(torch.isfinite(payload).all()):
        return "payload has non-finite values"
    return None


def payload_problems(payloads: Sequence[torch.Tensor], expected_sizes: Sequence[int | None]) -> list[str | None]:
    """`payload_problem` for every payload of a coalesced push (None size: a block the caller does not own,
    which the core drops on its own). One pass over the decoded frame decides when all are fine, the common
    case: its sum is finite only if every value is; only when it is not is each payload checked alone."""
    flat = getattr(payloads, "flat", None)
    counts = payloads.sizes if isinstance(payloads, Payloads) else [p.numel() for p in payloads]
    sized = all(size is None or n == size for n, size in zip(counts, expected_sizes))
    if sized and flat is not None and math.isfinite(float(flat.sum())):
        return [None] * len(payloads)
    return [None if size is None else payload_problem(p, size) for p, size in zip(payloads, expected_sizes)]
