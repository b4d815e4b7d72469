"""The evaluator's snapshot timer notices the end of training promptly, whatever eval_interval is."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

from weaksync.runtime.evaluator import Evaluator


class FakeStore:
    """`check` turns true once `done_after` checks have been made, like the workers' done keys."""

    def __init__(self, done_after: int) -> None:
        self.checks = 0
        self.done_after = done_after

    def check(self, keys: list[str]) -> bool:
        self.checks += 1
        return self.checks > self.done_after


def run_timer(interval: float, done_after: int) -> tuple[list[bool], threading.Thread]:
    taken: list[bool] = []
    fake = SimpleNamespace(
        spec=SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(eval_interval=interval))),
        take=lambda final=False: taken.append(final),
        pending=queue.Queue(),
    )
    thread = threading.Thread(
        target=Evaluator.snapshots, args=(fake, FakeStore(done_after), ["k"], threading.Event()), daemon=True
    )
    thread.start()
    thread.join(timeout=20)
    return taken, thread


def test_a_long_interval_does_not_delay_the_final_snapshot() -> None:
    # workers finish right after the first snapshot; with an hour between snapshots the timer must not sleep it out
    taken, thread = run_timer(interval=3600.0, done_after=3)
    assert not thread.is_alive(), "the snapshot timer slept through the end of training"
    assert taken == [False, True]


def test_short_intervals_take_periodic_snapshots_then_a_final_one() -> None:
    taken, thread = run_timer(interval=0.01, done_after=20)
    assert not thread.is_alive()
    assert taken[-1] is True and taken.count(True) == 1 and len(taken) >= 3


def order_of_events(live: bool) -> list[str]:
    """What the main thread does for three snapshots and the end of the queue, in order."""
    events: list[str] = []
    pending: queue.Queue = queue.Queue()
    for i in range(3):
        pending.put((float(i), None, i, i == 2))
    pending.put(None)
    fake = SimpleNamespace(
        pending=pending, pending_bytes=0, evaluate=lambda store, item: events.append(f"eval {item[0]:.0f}")
    )
    Evaluator.evaluate_pending(fake, None, live=live, training_over=lambda: events.append("training over"))
    return events


def test_live_evaluation_follows_the_snapshots() -> None:
    assert order_of_events(live=True) == ["eval 0", "eval 1", "eval 2", "training over"]


def test_deferred_evaluation_waits_for_the_end_of_training() -> None:
    assert order_of_events(live=False) == ["training over", "eval 0", "eval 1", "eval 2"]


def test_deferred_snapshots_are_thinned_not_dropped_when_memory_runs_short() -> None:
    """Over half the memory cap, every other waiting snapshot goes; the first and the newest always stay."""
    from weaksync.runtime import evaluator as ev

    theta = SimpleNamespace(nbytes=ev.MAX_PENDING_BYTES // 8)
    pending: queue.Queue = queue.Queue()
    for i in range(10):
        pending.put((float(i), theta, i, i == 9))
    pending.put(None)
    evaluated: list[float] = []
    logged: list[dict] = []
    fake = SimpleNamespace(
        pending=pending,
        pending_bytes=10 * theta.nbytes,  # as the timer thread counted them in
        evaluate=lambda store, item: evaluated.append(item[0]),
        log=SimpleNamespace(write=lambda ev_name, **fields: logged.append(fields)),
    )
    fake.thin = lambda deferred: Evaluator.thin(fake, deferred)
    Evaluator.evaluate_pending(fake, None, live=False)
    assert evaluated[0] == 0.0 and evaluated[-1] == 9.0, evaluated
    assert evaluated == sorted(evaluated) and len(evaluated) < 10 and logged
    assert fake.pending_bytes == len(evaluated) * theta.nbytes
