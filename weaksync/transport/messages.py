"""Wire format: a msgpack header frame, then (for PUSH and BLOCK) one raw float32 payload frame.

Every incoming message is checked here before any role sees it; a bad one raises `BadMessage` with a
reason the caller counts and logs. Payloads are decoded as views of the received frame (no copy).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import torch

from ..errors import WeaksyncError

WIRE_DTYPE = np.float32
MAX_HEADER_BYTES = 4096


class BadMessage(WeaksyncError, ValueError):
    """A message that does not follow the wire format; never fatal to the receiver."""


# kind -> (required integer/str fields, has payload)
SCHEMA: dict[str, tuple[dict[str, type], bool]] = {
    "hello": ({"w": int, "digest": str, "pid": int}, False),
    "welcome": ({"s": int, "digest": str}, False),
    "refuse": ({"reason": str}, False),
    "push": ({"w": int, "j": int, "base": int, "step": int}, True),
    "pull": ({"w": int, "j": int, "want": int, "clock": int}, False),
    "block": ({"j": int, "v": int}, True),
    "bye": ({"w": int}, False),
    "hb": ({"w": int}, False),
    "peek": ({"j": int}, False),
    "leave": ({"w": int}, False),
    "stop": ({}, False),
    "done": ({}, False),
}


@dataclass(frozen=True)
class Message:
    kind: str
    fields: dict[str, Any]
    payload: torch.Tensor | None = None

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def encode(kind: str, payload: torch.Tensor | None = None, **fields: Any) -> list[Any]:
    """Frames for `send_multipart(..., copy=False)`: the payload goes out as a view of the tensor, so the
    caller must not modify it afterwards (servers send immutable snapshots, workers fresh gradients)."""
    header = msgpack.packb({"k": kind, **fields})
    if payload is None:
        return [header]
    if payload.dtype != torch.float32 or not payload.is_contiguous():
        raise ValueError("payloads must be contiguous float32 tensors")
    return [header, memoryview(payload.numpy()).cast("B")]


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
    kind = header.pop("k")
    if kind not in SCHEMA:
        raise BadMessage(f"unknown message kind '{kind}'")
    required, has_payload = SCHEMA[kind]
    for name, typ in required.items():
        value = header.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise BadMessage(f"'{kind}' needs field '{name}' of type {typ.__name__}")
    expected_frames = 2 if has_payload else 1
    if len(frames) != expected_frames:
        raise BadMessage(f"'{kind}' has {len(frames)} frames, expected {expected_frames}")
    payload = _payload(frames[1]) if has_payload else None
    return Message(kind, header, payload)


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
