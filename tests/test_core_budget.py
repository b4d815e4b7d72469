"""The run's end is a protocol rule of the core: EndRun comes exactly once, exactly when the workers'
steps together reach the budget (never early, whoever did the steps, whatever is dropped), and every
pull after it is answered with Finished."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from weaksync.core import ServerCore, make_policy
from weaksync.core.actions import EndRun, Finished, Send

MODES = ["bsp", "backup", "partial-pull", "partial", "ssp", "async", "auto"]


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    budget=st.integers(1, 40),
    pushes=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(-1, 2)), max_size=80),
)
def test_end_of_run_comes_once_and_never_early(mode: str, budget: int, pushes: list) -> None:
    core = ServerCore(make_policy(mode, 3, 2), [0, 1], budget=budget)
    steps = {w: 0 for w in range(3)}  # each worker's own step counter, as its driver keeps it
    ends = 0
    for t, (worker, block, lag) in enumerate(pushes):
        base = max(0, core.version(block) - lag)  # fresh, stale or from the future (dropped)
        actions = core.on_push(worker, block, base, steps[worker], float(t))
        steps[worker] += 1
        end = [a for a in actions if isinstance(a, EndRun)]
        if end:
            ends += 1
            assert end[0].steps >= budget and core.steps_done() >= budget
        elif not core.ended:
            assert core.steps_done() < budget, "the budget was reached but the run did not end"
    assert ends == (1 if core.ended else 0)
    if core.ended:
        assert core.on_pull(0, 0, -1, 0, 0.0) == [Finished(0)]


def test_without_a_budget_the_core_never_ends_the_run() -> None:
    core = ServerCore(make_policy("async", 2, 1), [0])
    for step in range(50):
        core.on_push(0, 0, core.version(0), step, float(step))
    assert not core.ended and core.on_pull(1, 0, -1, 0, 0.0) == [Send(1, 0, core.version(0))]
