"""auto (core/auto.py): the quorum tuner on its own, and driving the real cores under slow and even workers.

The tuner must keep the full quorum when nothing is slow, shed a persistently slow party, come back when it
recovers, never leave its bounds, and make the same choices for the same observations. Driven by the
harness, the cores under auto keep every protocol invariant (tests/harness.py checks them event by event).
"""

from __future__ import annotations

import random

from harness import Harness, block_owners
from hypothesis import given, settings
from hypothesis import strategies as st
from test_core_properties import check_records

from weaksync.core.auto import (
    AUTO_BOLD_SAMPLES,
    AUTO_MARGIN,
    AUTO_MIN_SAMPLES,
    AUTO_SURE_SAMPLES,
    AUTO_WINDOW,
    QuorumTuner,
    staleness_bound,
)
from weaksync.core.policy import make_policy


def play(tuner: QuorumTuner, offsets: list[float], key: int, t: float) -> float:
    """One round opened at t in which party i answers offsets[i] later (in arrival order); returns its end."""
    tuner.start_round(key, t)
    for party, offset in sorted(enumerate(offsets), key=lambda x: x[1]):
        tuner.arrive(party, key, t + offset)
    return t + max(offsets)


def rounds(tuner: QuorumTuner, make: callable, count: int, start: int = 0) -> None:
    t = float(start)
    for key in range(start, start + count):
        t = play(tuner, make(key), key, t) + 0.001


def test_even_parties_keep_the_full_quorum() -> None:
    tuner = QuorumTuner("k", 4, 1, 4)
    rng = random.Random(0)
    rounds(tuner, lambda _: [0.010 * (1 + 0.2 * rng.random()) for _ in range(4)], 200)
    assert tuner.value == 4 and tuner.choices == []


def test_a_slow_party_is_shed_quickly_and_the_choice_says_why() -> None:
    tuner = QuorumTuner("k", 4, 1, 4)
    rounds(tuner, lambda _: [0.010, 0.011, 0.012, 0.045], AUTO_MIN_SAMPLES + 5)
    assert tuner.value == 3
    (choice,) = tuner.choices
    assert (choice.name, choice.value, choice.previous) == ("k", 3, 4)
    assert choice.rate > choice.previous_rate * 1.5
    assert "k=3" in choice.reason() and "beats k=4" in choice.reason()
    assert choice.as_dict()["rate_gain"] > 1.5


def test_the_quorum_comes_back_when_the_slow_party_recovers() -> None:
    tuner = QuorumTuner("k", 4, 1, 4)
    rounds(tuner, lambda _: [0.010, 0.011, 0.012, 0.045], 20)
    assert tuner.value == 3
    rounds(tuner, lambda _: [0.010, 0.011, 0.012, 0.0125], AUTO_WINDOW + AUTO_SURE_SAMPLES, start=20)
    assert tuner.value == 4
    assert [c.value for c in tuner.choices] == [3, 4]


def test_a_small_gain_needs_more_evidence_than_a_large_one() -> None:
    """k=3 at 0.8 of k=4's wait is worth 0.75/0.8 = 0.94 of k=4: no change; 2 of 4 at a quarter of the time
    is 2x, a clear gain, taken after AUTO_MIN_SAMPLES rounds."""
    tuner = QuorumTuner("k", 4, 1, 4)
    rounds(tuner, lambda _: [0.010, 0.010, 0.016, 0.020], 100)
    assert tuner.choices == []


def test_a_bold_gain_is_taken_on_fewer_rounds_than_a_leap() -> None:
    """Shedding a ×4 party doubles the rate or more: taken after AUTO_BOLD_SAMPLES rounds. A 1.6× gain (a
    leap, not a bold one) waits for AUTO_MIN_SAMPLES."""
    bold = QuorumTuner("k", 4, 1, 4)
    rounds(bold, lambda _: [0.010, 0.011, 0.012, 0.045], AUTO_BOLD_SAMPLES)
    assert bold.value == 3 and bold.choices[0].rate >= 2 * bold.choices[0].previous_rate
    leap = QuorumTuner("k", 4, 1, 4)
    rounds(leap, lambda _: [0.010, 0.011, 0.012, 0.026], AUTO_MIN_SAMPLES - 1)
    assert leap.value == 4
    rounds(leap, lambda _: [0.010, 0.011, 0.012, 0.026], 1, start=AUTO_MIN_SAMPLES - 1)
    assert leap.value == 3 and 1.5 <= leap.choices[0].rate / leap.choices[0].previous_rate < 2


def test_a_party_that_never_answers_is_censored_not_waited_for() -> None:
    tuner = QuorumTuner("k", 3, 1, 3, start=2)
    t = 0.0
    for key in range(40):
        tuner.start_round(key, t)
        tuner.arrive(0, key, t + 0.01)
        tuner.arrive(1, key, t + 0.011)
        t += 0.2  # party 2 is silent; rounds close once they waited 8x the 2nd arrival
        tuner.arrive(0, key, t)
    assert len(tuner.rounds) > 0 and tuner.value == 2


def test_departed_parties_are_not_waited_for() -> None:
    tuner = QuorumTuner("k", 3, 1, 3)
    tuner.start_round(0, 0.0)
    tuner.arrive(0, 0, 0.01)
    tuner.arrive(1, 0, 0.01)
    assert len(tuner.open) == 1
    tuner.set_members({0, 1}, now=0.02)
    assert len(tuner.open) == 0 and len(tuner.rounds) == 1


def test_staleness_bound_follows_the_quorum() -> None:
    assert [staleness_bound(4, k) for k in (1, 2, 3, 4)] == [3, 1, 1, 1]
    assert staleness_bound(100, 96) == 1 and staleness_bound(100, 10) == 9


@settings(max_examples=150, deadline=None)
@given(
    parties=st.integers(1, 6),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_choices_stay_in_bounds_and_are_deterministic(parties: int, data: st.DataObject, seed: int) -> None:
    low = data.draw(st.integers(1, parties))
    high = data.draw(st.integers(low, parties))

    def run() -> list[tuple]:
        rng = random.Random(seed)
        slow = {p: rng.choice([1.0, 1.0, 4.0, 20.0]) for p in range(parties)}
        tuner = QuorumTuner("k", parties, low, high)
        t = 0.0
        for key in range(120):
            if rng.random() < 0.02:  # the slow set changes now and then
                slow = {p: rng.choice([1.0, 4.0]) for p in range(parties)}
            t = play(tuner, [0.01 * slow[p] * (0.5 + rng.random()) for p in range(parties)], key, t)
            assert low <= tuner.value <= high
        return [(c.value, c.previous, c.at) for c in tuner.choices]

    first = run()
    assert first == run()
    for value, previous, _ in first:
        assert low <= value <= high and value != previous


# -- the cores under auto, driven by the harness -------------------------------------------------------------


def auto_run(durations: list[float], num_servers: int = 2, num_blocks: int = 4, seed: int = 0, steps: int = 60):
    policy = make_policy("auto", len(durations), num_blocks)
    owners = block_owners(num_blocks, num_servers)
    return Harness(policy, owners, steps, seed=seed, durations=durations).run()


def test_auto_sheds_a_slow_worker_and_keeps_every_invariant() -> None:
    h = auto_run([0.01, 0.04, 0.01, 0.01])
    check_records(h)
    assert [core.k for core in h.servers] == [3, 3]
    assert all(core.tau == 1 for core in h.servers)
    assert all(c.previous == 4 and c.value == 3 for core in h.servers for c in core.choices)
    assert any(u.action.quorum == 3 for u in h.updates)  # the LR rule sees the k in force


def test_auto_without_stragglers_keeps_the_full_quorums() -> None:
    """The tuner makes no change (k = N, b = B). The harness jitters every step by ±50 %, so now and then a
    round's last gradient comes later than waiting for it is worth, and the cut closes the round without it
    (its gradient joins the next round, stale by one); those are the only short rounds, and rare."""
    h = auto_run([0.01, 0.01, 0.01, 0.01])
    check_records(h)
    assert all(core.choices == [] for core in h.servers + h.workers)
    short = [u for u in h.updates if len(u.action.contributors) < 4 and u.live == 4]  # not the last rounds
    assert all(u.action.by_deadline for u in short) and len(short) < 0.15 * len(h.updates)
    assert all(p.fresh == frozenset(range(4)) for plans in h.plans for p in plans[1:])


def cut_core(k_min: int | None = None):
    """A server of auto with 4 workers and one block, its first round closed at t = 1.0 (so the next opens)."""
    from weaksync.core.server import ServerCore

    core = ServerCore(make_policy("auto", 4, 1, k=k_min), [0])
    for w in range(4):
        core.on_push(w, 0, 0, 0, 1.0)
    assert core.version(0) == 1
    return core


def test_the_cut_closes_a_round_once_waiting_for_the_next_gradient_stops_paying() -> None:
    """Three gradients on v1 came 0.01 s after the round opened; a fourth would have to come within
    4/3 × 0.01 s (× the margin) to be worth waiting for. It did not: the timer closes the round with three,
    marked as cut (by_deadline), a full quorum of three for the LR."""
    from weaksync.core.actions import Apply

    core = cut_core()
    for w in range(3):
        assert not [a for a in core.on_push(w, 0, 1, 1, 1.01) if isinstance(a, Apply)]
    due = core.next_deadline()
    assert due is not None and abs(due - (1.0 + (1 + AUTO_MARGIN) * 4 / 3 * 0.01)) < 1e-9
    assert core.on_timer(due - 1e-6) == []
    (update,) = [a for a in core.on_timer(due) if isinstance(a, Apply)]
    # the cut chose this round's quorum: 3 is a full quorum of 3 for the LR; the k in force stays 4
    assert (len(update.contributors), update.by_deadline, update.quorum, core.k) == (3, True, 3, 4)
    late = core.on_push(3, 0, 1, 1, due + 0.03)  # the late gradient joins the next round, stale by one
    assert core.blocks[0].contributors == {3: (1, 1.0, 1)} and not [a for a in late if isinstance(a, Apply)]


def test_the_first_round_is_cut_from_when_version_0_was_first_served() -> None:
    """Version 0 has no update to measure from: its round opens when the first worker is sent it, so a
    slow worker's first step (the slowest of all) does not hold the first update either."""
    from weaksync.core.actions import Apply
    from weaksync.core.server import ServerCore

    core = ServerCore(make_policy("auto", 4, 1), [0])
    for w in range(4):
        core.on_pull(w, 0, -1, 0, 0.5 + 0.001 * w)
    for w in range(3):
        assert not [a for a in core.on_push(w, 0, 0, 0, 0.6) if isinstance(a, Apply)]
    due = core.next_deadline()
    assert due is not None and abs(due - (0.5 + (1 + AUTO_MARGIN) * 4 / 3 * 0.1)) < 1e-9
    (update,) = [a for a in core.on_timer(due) if isinstance(a, Apply)]
    assert (len(update.contributors), update.by_deadline, core.version(0)) == (3, True, 1)


def test_a_worker_left_behind_is_not_waited_for_until_it_pushes_again() -> None:
    """Worker 3 missed the last round (cut) and is still computing: the next round closes as soon as the
    three others are in. Once its late push came, it is waited for again."""
    from weaksync.core.actions import Apply

    core = cut_core()
    for w in range(3):
        core.on_push(w, 0, 1, 1, 1.01)
    core.on_timer(core.next_deadline())  # v2, cut without worker 3
    assert core.blocks[0].behind == {3}
    closed = [a for w in range(3) for a in core.on_push(w, 0, 2, 2, 1.03) if isinstance(a, Apply)]
    assert [(len(a.contributors), a.by_deadline) for a in closed] == [(3, True)] and core.version(0) == 3
    core.on_push(3, 0, 1, 1, 1.035)  # its step on v1: too stale for k = 4 (τ = 1), but it is back
    assert core.blocks[0].behind == set()
    for w in range(3):
        core.on_push(w, 0, 3, 3, 1.05)
    assert core.version(0) == 3 and core.next_deadline() is not None  # waiting for worker 3 again


def test_a_gradient_late_for_the_last_round_rides_along_without_counting_toward_k() -> None:
    """k = 3 of 4: the round of v1 closed without worker 3, whose gradient on v1 then comes during the round
    of v2. It is added (nothing is wasted), but the round still waits for three gradients on v2: counted,
    it would close the round without one of them, which would then come late for the next round."""
    from weaksync.core.actions import Apply

    core = cut_core()
    core.k = 3
    for w in range(3):
        core.on_push(w, 0, 1, 1, 1.01)
    assert core.version(0) == 2 and core.blocks[0].behind == {3}
    core.on_push(3, 0, 1, 1, 1.02)  # late for v1's round, stale by one: accepted as a rider
    early = [a for w in range(2) for a in core.on_push(w, 0, 2, 2, 1.03) if isinstance(a, Apply)]
    assert early == [] and core.version(0) == 2  # two on time and a rider are not three on time
    (update,) = [a for a in core.on_push(2, 0, 2, 2, 1.035) if isinstance(a, Apply)]
    assert sorted(w for w, _, _ in update.contributors) == [0, 1, 2, 3] and not update.by_deadline


def test_a_fourth_gradient_in_time_is_waited_for() -> None:
    core = cut_core()
    for w in range(3):
        core.on_push(w, 0, 1, 1, 1.01)
    core.on_push(3, 0, 1, 1, 1.0125)  # within 4/3 x 0.01 s: the round closes full, not cut
    assert core.version(0) == 2 and core.next_deadline() is None


def test_stale_gradients_do_not_start_the_cut_and_k_min_bounds_it() -> None:
    """A gradient on an older version arrives just after the round opened: were it counted, the cut would
    close the round at once with it alone. And with k_min = 3, two on-time gradients never close a round."""
    core = cut_core()
    core.on_push(0, 0, 0, 1, 1.001)  # stale by one, accepted
    assert core.next_deadline() is None
    bounded = cut_core(k_min=3)
    for w in range(2):
        bounded.on_push(w, 0, 1, 1, 1.01)
    assert bounded.next_deadline() is None and bounded.on_timer(5.0) == [] and bounded.version(0) == 1


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    s=st.integers(1, 3),
    extra_blocks=st.integers(0, 3),
    slow=st.lists(st.sampled_from([1.0, 1.0, 3.0, 10.0]), min_size=5, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_auto_never_deadlocks_and_stays_in_bounds(
    n: int, s: int, extra_blocks: int, slow: list[float], seed: int
) -> None:
    durations = [0.01 * f for f in slow[:n]]
    h = auto_run(durations, num_servers=s, num_blocks=s + extra_blocks, seed=seed, steps=30)
    check_records(h)
    assert [w.step for w in h.workers] == [30] * n
    p = h.policy
    for core in h.servers:
        assert p.k_min <= core.k <= n
        assert all(p.k_min <= c.value <= n for c in core.choices)
    for core in h.workers:
        assert p.b_min <= core.b <= p.num_blocks
    again = auto_run(durations, num_servers=s, num_blocks=s + extra_blocks, seed=seed, steps=30)
    assert [c.choices for c in again.servers + again.workers] == [c.choices for c in h.servers + h.workers]


def test_lowering_k_closes_the_rounds_it_completes() -> None:
    """Worker 1 is slow; when the tuner lowers k on a push to block 0, block 1's round, which already holds the
    three fast workers' gradients, is applied at once instead of waiting for the slow one."""
    from weaksync.core.actions import Apply
    from weaksync.core.server import ServerCore

    core = ServerCore(make_policy("auto", 4, 2), [0, 1])
    t = 0.0
    for _ in range(40):
        v = core.version(0)
        for w in (0, 2, 3):
            for j in (0, 1):
                core.on_push(w, j, v, v, t + 0.01)
        actions = core.on_push(1, 0, v, v, t + 0.04)  # the slow one, block 0 first
        if core.k == 3:
            applied = [a for a in actions if isinstance(a, Apply) and a.block == 1]
            assert [(len(a.contributors), a.quorum) for a in applied] == [(3, 3)]
            return
        core.on_push(1, 1, v, v, t + 0.04)
        t += 0.05
    raise AssertionError("k never dropped to 3")
