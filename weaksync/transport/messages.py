"""Wire format: one typed dataclass per message kind, sent as a msgpack header frame and, for `Push` and
`Block`, one raw float32 payload frame.

Every incoming message is checked here before any role sees it: `decode` returns one of the message classes
with every field of its declared type, or raises `BadMessage` with a reason the caller counts and logs.
Payloads are decoded as views of the received frame (no copy). The header keeps the short field names
(`w`, `j`, `s`, `v`) of the original format, so the bytes on the wire did not change with the types.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union, get_type_hints

import msgpack
import numpy as np
import torch

from ..errors import WeaksyncError

WIRE_DTYPE = np.float32
MAX_HEADER_BYTES = 4096


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
    """Worker → server: the gradient of one block, computed on version `base` in the worker's step `step`;
    `sent_at` (wall clock) measures the link's one-way delay."""

    KIND: ClassVar[str] = "push"
    worker: int
    block: int
    base: int
    step: int
    grad: torch.Tensor
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class Pull:
    """Worker → server: send block `block` once its version exceeds `want` (now, if it already does)."""

    KIND: ClassVar[str] = "pull"
    worker: int
    block: int
    want: int
    clock: int


@dataclass(frozen=True, slots=True)
class Block:
    """Server → worker or evaluator: a block's values at `version`."""

    KIND: ClassVar[str] = "block"
    block: int
    version: int
    values: torch.Tensor


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
    """Evaluator → server: send block `block` as it is now, outside the protocol."""

    KIND: ClassVar[str] = "peek"
    block: int


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


Message = Union[Hello, Welcome, Refuse, Push, Pull, Block, Bye, Heartbeat, Peek, Leave, Stop, Done]

# attribute -> header key: the wire keeps the short names of the first format
_WIRE_KEYS = {"worker": "w", "block": "j", "server": "s", "version": "v", "sent_at": "ts"}


@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    types: tuple[type, ...]
    required: bool


@dataclass(frozen=True)
class _Kind:
    cls: type
    fields: tuple[_Field, ...]
    payload: str | None  # the attribute that travels as the second frame


def _describe(cls: type) -> _Kind:
    hints = get_type_hints(cls)
    fields: list[_Field] = []
    payload = None
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if hint is torch.Tensor:
            payload = f.name
            continue
        types = tuple(t for t in getattr(hint, "__args__", (hint,)) if t is not type(None))
        required = f.default is dataclasses.MISSING
        fields.append(_Field(f.name, _WIRE_KEYS.get(f.name, f.name), types, required))
    return _Kind(cls, tuple(fields), payload)


KINDS: dict[str, _Kind] = {cls.KIND: _describe(cls) for cls in Message.__args__}


def encode(msg: Message) -> list[Any]:
    """Frames for `send_multipart(..., copy=False)`: the payload goes out as a view of the tensor, so the
    caller must not modify it afterwards (servers send immutable snapshots, workers fresh gradients)."""
    kind = KINDS[msg.KIND]
    header: dict[str, Any] = {"k": msg.KIND}
    for f in kind.fields:
        value = getattr(msg, f.name)
        if value is not None:
            header[f.key] = value
    frames: list[Any] = [msgpack.packb(header)]
    if kind.payload is not None:
        payload = getattr(msg, kind.payload)
        if payload.dtype != torch.float32 or not payload.is_contiguous():
            raise ValueError("payloads must be contiguous float32 tensors")
        frames.append(memoryview(payload.numpy()).cast("B"))
    return frames


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
    for f in kind.fields:
        value = header.get(f.key)
        if value is None and not f.required:
            continue
        if not isinstance(value, f.types) or isinstance(value, bool):
            raise BadMessage(f"'{name}' needs field '{f.key}' of type {f.types[0].__name__}")
        values[f.name] = value
    expected_frames = 1 if kind.payload is None else 2
    if len(frames) != expected_frames:
        raise BadMessage(f"'{name}' has {len(frames)} frames, expected {expected_frames}")
    if kind.payload is not None:
        values[kind.payload] = _payload(frames[1])
    return kind.cls(**values)


def _buffer(frame: Any) -> memoryview:
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame)


def _payload(frame: Any) -> torch.Tensor:
    view = _buffer(frame)
    if view.nbytes % WIRE_DTYPE().itemsize:
        raise BadMessage(f"payload of {view.nbytes} bytes is not a whole number of float32 values")
    array = np.frombuffer(view, dtype=WIRE_DTYPE)
    with warnings.catch_warnings():  # the frame is read-only; receivers only read from it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


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
