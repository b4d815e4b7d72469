"""Structured event log: one JSON object per line, one file per process, read by summary and report.

Each record has `ev` (its type) and `t` (wall-clock seconds since the epoch); writes are buffered and
flushed about once a second so logging stays off the step's critical path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


class EventLog:
    def __init__(self, path: Path, flush_interval: float = 1.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = _ends_torn(path)
        self._file = path.open("a", buffering=1 << 16)
        if torn:  # a killed process of this role left half a line: the restarted one's records start on a new one
            self._file.write("\n")
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()

    def write(self, ev: str, **fields: Any) -> None:
        fields.setdefault("t", time.time())
        self._file.write(json.dumps({"ev": ev, **fields}, separators=(",", ":")) + "\n")
        now = time.monotonic()
        if now - self._last_flush > self._flush_interval:
            self._file.flush()
            self._last_flush = now

    def flush(self) -> None:
        self._file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _ends_torn(path: Path) -> bool:
    """Does the file end inside a line (its writer was killed mid-record)?"""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def log_new_choices(log: EventLog, choices: Sequence[Any], logged: int, **who: Any) -> int:
    """Write auto's quorum changes made since the first `logged` (core/auto.py Choice); returns the new count."""
    for choice in choices[logged:]:
        log.write("choice", **who, **choice.as_dict())
    return len(choices)


def per_block(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The events with each "update" or "drop" record split into one per block. A server writes one record
    for the blocks a message or timer updated (or dropped) alike (same version, step, quorum and
    contributors: all of them in a round without stragglers), `j` listing them: at B = 256 a server's 128
    JSON lines a round were 3–5 % of its py-spy samples. Records of older runs name one block."""
    for e in events:
        if e["ev"] in ("update", "drop") and isinstance(e.get("j"), list):
            for j in e["j"]:
                yield {**e, "j": j}
        else:
            yield e


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one log; a torn last line (a killed process) is skipped, not fatal."""
    with path.open() as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
