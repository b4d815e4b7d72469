"""Messages held back by injected delays (slow server replies, slow links), sent when due.

Per destination the order is kept (a link is FIFO, like the TCP connection under ZeroMQ): a message is
never due before the previous one to the same peer. Without any delay the caller sends directly.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

import zmq


class Outbox:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any, zmq.Socket, list]] = []
        self._last_due: dict[Any, float] = {}
        self._seq = itertools.count()

    def put(self, due: float, peer: Any, sock: zmq.Socket, frames: list) -> None:
        due = max(due, self._last_due.get(peer, 0.0))
        self._last_due[peer] = due
        heapq.heappush(self._heap, (due, next(self._seq), peer, sock, frames))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def flush(self, now: float) -> int:
        """Send everything due by `now`; returns how many messages went out."""
        sent = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, _, sock, frames = heapq.heappop(self._heap)
            try:
                sock.send_multipart(frames, copy=False)
            except zmq.ZMQError:  # the peer left meanwhile (ROUTER_MANDATORY)
                pass
            sent += 1
        return sent

    def __len__(self) -> int:
        return len(self._heap)
