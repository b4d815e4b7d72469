"""`auto`: the quorums k (servers) and b (workers) chosen online from the arrival times the cores observe.

One rule for both (Chen et al. 2016's backup workers, Xu et al.'s dynamic backup workers, order statistics):
a quorum q of Q parties (k of N workers' gradients, b of B blocks) is worth (q / Q) of a full one, and costs
the time until its q-th arrival. The tuner measures rounds (when each party answered after a version was
made, or after a step's pulls were sent), estimates the expected q-th order statistic from the recent ones,
and picks the q with the most value per second:

    rate(q) = (q / Q) / (overhead + E[R_(q)])

Counting an update of q gradients as q/N of a full one is the linear-scaling view (Goyal et al. 2017); it
is conservative: a smaller batch is usually worth more than its share, so the tuner errs toward waiting,
and with nothing slow it keeps the full quorum (bsp). Changes are rare and visible: a challenger must beat
the quorum in force by a margin for several closed rounds (fewer, the larger its gain), and every change is
a `Choice` with the figures that decided it. Pure and deterministic: the same observations, the same
choices (docs/guarantees.md).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

AUTO_WINDOW = 32  # closed rounds the estimate averages over
AUTO_MIN_SAMPLES = 4  # closed rounds (since the last change) before a smaller quorum may be chosen ...
AUTO_SURE_SAMPLES = 12  # ... and before a larger one: a short window under-samples rare large delays (spikes),
# so it can make a tail look gone; it cannot make one appear
AUTO_OPEN = 4  # rounds measured at once
AUTO_CENSOR = 8.0  # a round stops waiting for its last parties after this × the current quorum's wait
AUTO_MARGIN = 0.15  # a challenger's rate must exceed the current one by this fraction
AUTO_PATIENCE = 3  # ... in this many consecutive closed rounds
AUTO_LEAP = 1.5  # a smaller quorum this many times faster is taken at once: a stuck party costs every round waited
AUTO_BOLD = 2.0  # ... and one this many times faster already after AUTO_BOLD_SAMPLES closed rounds: under a ×4
AUTO_BOLD_SAMPLES = 2  # worker each round at the full quorum costs about twice a round without it


def staleness_bound(num_workers: int, k: int) -> int:
    """τ that goes with a push quorum k: while one worker computes a step, the others make about N/k - 1
    updates, so a gradient that old is an on-time one (async, k = 1: N - 1; a quorum of most workers: 1).
    At least 1, so that a step computed on a block it did not wait for (b < B) is still accepted."""
    return max(1, math.ceil(num_workers / k) - 1)


@dataclass(frozen=True)
class Choice:
    """One change of a quorum, and the figures measured when it was made."""

    at: float  # the core's clock
    name: str  # "k" (server) or "b" (worker)
    value: int
    previous: int
    rate: float  # estimated value per second of `value`
    previous_rate: float
    wait: float  # estimated seconds until the value-th arrival
    previous_wait: float

    def reason(self) -> str:
        gain = self.rate / self.previous_rate if self.previous_rate > 0 else float("inf")
        return (
            f"{self.name}={self.value} ({self.wait * 1e3:.1f} ms to its last arrival) beats "
            f"{self.name}={self.previous} ({self.previous_wait * 1e3:.1f} ms): {gain:.2f}x the progress per second"
        )

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "previous": self.previous,
            "rate_gain": round(self.rate / self.previous_rate, 4) if self.previous_rate > 0 else None,
            "wait_s": round(self.wait, 6),
            "previous_wait_s": round(self.previous_wait, 6),
            "reason": self.reason(),
        }


@dataclass
class _Round:
    """One measured round: opened when a version was made (server) or a step ended (worker)."""

    key: int  # the version (server) or step (worker) it measures
    opened: float
    offsets: dict[int, float]  # party -> seconds after `opened` its first answer on `key` (or newer) came
    quorum_wait: tuple[int, float] | None = None  # (q, the q-th smallest offset), kept for `_censored`


class QuorumTuner:
    """Chooses a quorum in [low, high] of `parties` parties from the order statistics of measured rounds.

    A round opens at a moment (a version published, a step's pulls sent) and records, per party, how long it
    took until that party answered on it (a gradient computed on that version or a newer one; a fresh reply
    to that step's pulls). It closes when every member answered, or, for a party that is stuck or far
    behind, once it has been open `AUTO_CENSOR` × the current quorum's wait (the missing offsets are then
    what had elapsed: a lower bound, which only makes the tuner wait more). Rounds close in the order they
    opened, at most `AUTO_OPEN` are open at once, and each closed one is one sample of the order statistics.
    """

    def __init__(self, name: str, parties: int, low: int, high: int, start: int | None = None):
        if not 1 <= low <= high <= parties:
            raise ValueError(f"{name} bounds must satisfy 1 <= low ({low}) <= high ({high}) <= {parties}")
        self.name = name
        self.parties = parties
        self.low, self.high = low, high
        self.value = high if start is None else min(max(start, low), high)
        self.members: set[int] = set(range(parties))
        self.open: deque[_Round] = deque()
        self.rounds: deque[np.ndarray] = deque(maxlen=AUTO_WINDOW)  # sorted offsets of closed rounds
        self.choices: list[Choice] = []
        self._leader: int | None = None  # direction (+1 up, -1 down) of the rounds that pointed away from value
        self._lead = 0

    # -- observations ------------------------------------------------------------------------------------

    def start_round(self, key: int, now: float) -> None:
        """A new round to measure (skipped while AUTO_OPEN rounds are still open)."""
        if len(self.open) < AUTO_OPEN and (not self.open or key > self.open[-1].key):
            self.open.append(_Round(key, now, {}))

    def arrive(self, party: int, key: int, now: float, overhead: float = 0.0) -> Choice | None:
        """Party answered on `key` (and so on every older round) at `now`; returns a Choice if k or b changed."""
        return self.arrive_many((party,), key, now, overhead)

    def arrive_many(self, parties: Sequence[int], key: int, now: float, overhead: float = 0.0) -> Choice | None:
        """Several parties answered on `key` at `now` (a message's blocks): as `arrive` for each, with the
        rounds they complete closed once, after all of them (a closed round's figures are the same)."""
        for rnd in self.open:
            if rnd.key > key:
                break
            offsets = rnd.offsets
            offset = max(0.0, now - rnd.opened)
            size = len(offsets)
            offsets.update((party, offset) for party in parties if party not in offsets)
            if len(offsets) > size and rnd.quorum_wait is not None and offset < rnd.quorum_wait[1]:
                rnd.quorum_wait = None  # the cached q-th offset moved
        return self._close_rounds(now, overhead)

    def set_members(self, members: Iterable[int], now: float | None, overhead: float = 0.0) -> Choice | None:
        """The parties that can still answer (a departed worker is no longer waited for); with `now`, rounds
        that waited only for departed parties close."""
        self.members = set(members)
        return None if now is None else self._close_rounds(now, overhead)

    def waits(self, min_samples: int = AUTO_MIN_SAMPLES) -> np.ndarray | None:
        """E[R_(q)] for q = 1 .. members: the mean q-th offset of the recent closed rounds (None: too few).
        Summed round by round in their order, as a sum per column would be (the same figures, bit for bit),
        but a vector at a time: a worker's tuner has B columns and closes a round every step."""
        size = len(self.members)
        rounds = [r for r in self.rounds if len(r) >= size]
        if size == 0 or len(rounds) < min_samples:
            return None
        total = rounds[0][:size].copy()
        for r in rounds[1:]:
            total += r[:size]
        return total / len(rounds)

    # -- decisions -----------------------------------------------------------------------------------------

    def _close_rounds(self, now: float, overhead: float) -> Choice | None:
        choice = None
        while self.open:  # O(1) per arrival until a round can be complete: a worker's tuner has B parties
            rnd = self.open[0]
            complete = len(rnd.offsets) >= len(self.members) and self.members <= rnd.offsets.keys()
            if not complete and not self._censored(rnd, now):
                break
            self.open.popleft()
            missing = self.members - rnd.offsets.keys()
            elapsed = max(0.0, now - rnd.opened)
            offsets = [rnd.offsets[p] for p in self.members if p in rnd.offsets] + [elapsed] * len(missing)
            self.rounds.append(np.array(sorted(offsets)))
            choice = self._decide(now, overhead) or choice
        return choice

    def _censored(self, rnd: _Round, now: float) -> bool:
        if len(rnd.offsets) < self.value:
            return False
        if rnd.quorum_wait is None or rnd.quorum_wait[0] != self.value:  # once per round and quorum, not per arrival
            rnd.quorum_wait = (self.value, heapq.nsmallest(self.value, rnd.offsets.values())[-1])
        return now - rnd.opened > AUTO_CENSOR * max(rnd.quorum_wait[1], 1e-4)

    def _decide(self, now: float, overhead: float) -> Choice | None:
        """Re-evaluate after a closed round: the best quorum by rate, if it beats the current one clearly."""
        waits = self.waits(AUTO_BOLD_SAMPLES)
        if waits is None:
            return None
        size = len(self.members)
        early = sum(len(r) >= size for r in self.rounds) < AUTO_MIN_SAMPLES  # then only a bold leap down
        high = min(self.high, len(waits))
        low = min(self.low, high)
        quorums = np.arange(low, high + 1)
        rates = (quorums / self.parties) / np.maximum(overhead + waits[low - 1 : high], 1e-9)  # of q = low .. high
        current = min(max(self.value, low), high)
        rate = lambda q: float(rates[q - low])  # noqa: E731
        best = int(quorums[np.flatnonzero(rates == rates.max())[-1]])  # ties go to the larger quorum
        if best == current or rate(best) <= rate(current) * (1 + AUTO_MARGIN):
            self._leader, self._lead = None, 0
            return None
        if early:  # the largest quorum that is boldly better: two rounds are too few to tell 2 from 3 of 4
            bold = quorums[(quorums < current) & (rates >= rate(current) * AUTO_BOLD)]
            if not len(bold):
                return None
            best = int(bold.max())
        if best > current and len(self.rounds) < AUTO_SURE_SAMPLES:
            return None  # a few rounds without a late arrival do not show that the tail is gone
        direction = 1 if best > current else -1
        self._lead = self._lead + 1 if direction == self._leader else 1
        self._leader = direction  # patience counts rounds that point the same way, whichever q is best in each
        leap = direction < 0 and rate(best) >= rate(current) * AUTO_LEAP
        if self._lead < AUTO_PATIENCE and not leap:
            return None
        choice = Choice(
            now, self.name, best, current, rate(best), rate(current),
            overhead + float(waits[best - 1]), overhead + float(waits[current - 1]),
        )  # fmt: skip
        self.value = best
        self._leader, self._lead = None, 0
        self.rounds.clear()  # rounds measured under the old quorum do not describe the new one: measure afresh
        self.choices.append(choice)
        return choice
