"""Who takes part in the run, as one server sees it (sans-I/O): registration, departures and silence.

A worker is *waited for* (it counts toward push quorums and the SSP clock) from the start of the run
until it says bye, the launcher reports it dead, or it is silent for longer than `expiry`. Silence is
only a suspicion: any message from the worker brings it back, with its clock and its parked pulls. A
worker that said bye or died comes back only with a new hello (a restarted process).
"""

from __future__ import annotations

from typing import Literal

Departure = Literal["bye", "dead", "silent"]


class Membership:
    """One state per worker: waited for (`live`), or departed with a reason; plus when it was last heard."""

    def __init__(self, num_workers: int, expiry: float | None = None, orphan_after: float | None = None):
        self.num_workers = num_workers
        self.expiry = expiry  # seconds of silence after which a registered worker is no longer waited for
        self.orphan_after = orphan_after  # seconds with every worker departed before the server gives up
        self.live: set[int] = set(range(num_workers))  # mutated in place: ServerCore shares this set
        self.registered: set[int] = set()
        self.departed: dict[int, Departure] = {}
        self.last_seen: dict[int, float] = {}
        self.dead: dict[int, int] = {}  # worker -> the process the launcher reported dead
        self.orphan_since: float | None = None
        self.orphaned = False

    def valid(self, worker: int) -> bool:
        return 0 <= worker < self.num_workers

    def from_dead_process(self, worker: int, process: int | None) -> bool:
        """A hello sent by a process the launcher already reported dead (it overtook the hello)."""
        return process is not None and self.dead.get(worker) == process

    def register(self, worker: int, now: float) -> bool:
        """A hello. True when the worker had departed and now takes part again."""
        self.registered.add(worker)
        self.last_seen[worker] = now
        return self._return(worker)

    def seen(self, worker: int, now: float) -> bool:
        """Any message from a registered worker. True when it was only silent and takes part again."""
        if worker not in self.registered:
            return False
        self.last_seen[worker] = now
        return self.departed.get(worker) == "silent" and self._return(worker)

    def depart(self, worker: int, why: Departure, process: int | None = None) -> bool:
        """True when the worker was waited for until now. `process`: which process of it died (launcher)."""
        if not self.valid(worker):
            return False
        if process is not None:
            self.dead[worker] = process
        if why == "silent" and worker in self.departed:
            return False
        self.departed[worker] = why
        was_live = worker in self.live
        self.live.discard(worker)
        return was_live

    def expired(self, now: float) -> list[tuple[int, float]]:
        """Registered workers waited for that were silent too long, with how long (the caller departs each
        as silent, one at a time, so what follows one departure is decided before the next)."""
        if self.expiry is None:
            return []
        quiet = [(w, now - self.last_seen[w]) for w in sorted(self.live & self.registered)]
        return [(w, silent) for w, silent in quiet if silent >= self.expiry]

    def orphan_wait(self, now: float) -> float | None:
        """How long every registered worker has been gone, once that exceeds `orphan_after` (once only):
        nobody is left to serve and nobody said stop (the evaluator or launcher is lost)."""
        if self.orphaned or self.orphan_after is None or self.live or not self.registered:
            self.orphan_since = None
            return None
        if self.orphan_since is None:
            self.orphan_since = now
        waited = now - self.orphan_since
        if waited < self.orphan_after:
            return None
        self.orphaned = True
        return waited

    def next_deadline(self) -> float | None:
        times = []
        if self.expiry is not None:
            times += [self.last_seen[w] + self.expiry for w in self.live & self.registered]
        if self.orphan_since is not None and self.orphan_after is not None and not self.orphaned:
            times.append(self.orphan_since + self.orphan_after)
        return min(times, default=None)

    def _return(self, worker: int) -> bool:
        if worker in self.live:
            return False
        self.departed.pop(worker, None)
        self.live.add(worker)
        return True
