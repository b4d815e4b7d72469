"""Naming the straggler: workers by compute time, servers and links by one-way push delay."""

from __future__ import annotations

from weaksync.report.slow import find_stragglers, ratio_to_others, slow_share_over_time


def _steps(compute: dict[int, float], count: int = 50, slow_from: dict[int, int] | None = None) -> list[dict]:
    out = []
    for i in range(count):
        for w, c in compute.items():
            slow = (slow_from or {}).get(w, 0) <= i
            dur = c if slow else compute[0]
            out.append({"w": w, "t": float(i), "t_end": float(i) + dur})
    return out


def _workers(compute: dict[int, float]) -> dict[str, dict]:
    return {str(w): {"compute_time": {"p50": c}} for w, c in compute.items()}


def test_ratio_to_others() -> None:
    assert ratio_to_others({"a": 4.0, "b": 1.0, "c": 1.0}, "a") == 4.0
    assert ratio_to_others({"a": 4.0}, "a") is None
    assert ratio_to_others({"a": 1.0, "b": 0.0}, "a") is None


def test_a_persistent_slow_worker_is_named() -> None:
    compute = {0: 0.01, 1: 0.04, 2: 0.01, 3: 0.011}
    found = find_stragglers(_steps(compute), _workers(compute), {})
    assert found == [{"role": "worker", "id": 1, "metric": "compute p50", "ratio": 4.0, "slow_share": 1.0,
                      "persistent": True}]  # fmt: skip


def test_a_worker_slow_only_late_in_the_run_is_not_persistent() -> None:
    compute = {0: 0.01, 1: 0.04, 2: 0.01}
    steps = _steps(compute, slow_from={1: 35})  # slow in the last 30 % of the run only
    assert 0.2 <= slow_share_over_time(steps, 1) <= 0.4
    found = find_stragglers(steps, _workers(compute), {})
    assert found[0]["persistent"] is False


def test_no_straggler_without_a_gap() -> None:
    compute = {0: 0.01, 1: 0.012, 2: 0.011}
    assert find_stragglers(_steps(compute), _workers(compute), {}) == []


def test_slow_server_and_slow_link_by_push_delay() -> None:
    links = {f"{w}-{s}": {"push_delay_p50": 0.001} for w in range(3) for s in range(2)}
    links["0-0"]["push_delay_p50"] = 0.0025  # ×2.5 but only 1.5 ms: noise, not a straggler
    for w in range(3):
        links[f"{w}-1"]["push_delay_p50"] = 0.01  # every worker sees server 1 slow
    links["2-0"]["push_delay_p50"] = 0.02  # and the link of worker 2 to server 0 is slow
    found = find_stragglers([], {}, links)
    assert {"role": "server", "id": 1, "metric": "push delay p50", "ratio": 4.0} in found  # vs median(2.5, 1, 20) ms
    assert {"role": "link", "id": "2-0", "metric": "push delay p50", "ratio": 11.43} in found
    assert len(found) == 2


def test_a_server_slow_to_answer_is_named_by_its_pull_round_trips() -> None:
    links = {f"{w}-{s}": {"pull_rtt_p50": 0.005 if s == 0 else 0.05} for w in range(3) for s in range(2)}
    found = find_stragglers([], {}, links)
    assert found == [{"role": "server", "id": 1, "metric": "pull round trip p50", "ratio": 10.0}]
