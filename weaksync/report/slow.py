"""Who is slow: name the worker, server or link that lags its peers, and say whether it lags persistently.

A peer counts as slow when its median exceeds `threshold` × the median of the others (and by at least
MIN_GAP seconds); it is a
persistent straggler when that holds in at least `persistent_share` of the run's time windows.
"""

from __future__ import annotations

from statistics import median
from typing import Any

THRESHOLD = 1.5
MIN_GAP = 0.002  # seconds: below this, a difference is scheduling noise on a busy host, not a straggler
PERSISTENT_SHARE = 0.8
WINDOWS = 10


def ratio_to_others(values: dict, key: object) -> float | None:
    """values[key] / median(values of the others); None without others or with a zero baseline."""
    others = [v for k, v in values.items() if k != key]
    if not others:
        return None
    base = median(others)
    return values[key] / base if base > 0 else None


def lags(values: dict, key: object, threshold: float = THRESHOLD) -> float | None:
    """The ratio to the others when `key` lags them by both `threshold` and MIN_GAP, else None."""
    ratio = ratio_to_others(values, key)
    if ratio is None or ratio < threshold:
        return None
    others = [v for k, v in values.items() if k != key]
    return ratio if values[key] - median(others) >= MIN_GAP else None


def slow_share_over_time(steps: list[dict[str, Any]], worker: int, threshold: float = THRESHOLD) -> float:
    """Share of equal time windows in which `worker`'s median compute time (injected delay included) was
    at least `threshold` × the others' median in that window."""
    if not steps:
        return 0.0
    t0, t1 = min(e["t"] for e in steps), max(e["t"] for e in steps)
    width = (t1 - t0) / WINDOWS or 1.0
    slow = counted = 0
    for i in range(WINDOWS):
        lo, hi = t0 + i * width, t0 + (i + 1) * width
        window = [e for e in steps if lo <= e["t"] < hi or (i == WINDOWS - 1 and e["t"] == t1)]
        mine = [e["t_end"] - e["t"] for e in window if e["w"] == worker]
        others = [e["t_end"] - e["t"] for e in window if e["w"] != worker]
        if not mine or not others:
            continue
        counted += 1
        slow += median(mine) >= threshold * median(others)
    return slow / counted if counted else 0.0


def find_stragglers(
    steps: list[dict[str, Any]], workers: dict[str, dict], links: dict[str, dict], threshold: float = THRESHOLD
) -> list[dict[str, Any]]:
    """Slow workers (compute), servers (push delay seen by every worker) and links (push delay of one
    worker to one server against the other workers to that server)."""
    found: list[dict[str, Any]] = []
    compute = {w: s["compute_time"]["p50"] for w, s in workers.items() if s["compute_time"]["p50"] is not None}
    for w in compute:
        ratio = lags(compute, w, threshold)
        if ratio is not None:
            share = slow_share_over_time(steps, int(w), threshold)
            found.append({"role": "worker", "id": int(w), "metric": "compute p50", "ratio": round(ratio, 2),
                          "slow_share": round(share, 2), "persistent": share >= PERSISTENT_SHARE})  # fmt: skip
    delay = {k: v["push_delay_p50"] for k, v in links.items() if v.get("push_delay_p50") is not None}
    servers = sorted({k.split("-")[1] for k in delay})
    per_server = {s: median(v for k, v in delay.items() if k.split("-")[1] == s) for s in servers}
    rtt = {k: v["pull_rtt_p50"] for k, v in links.items() if v.get("pull_rtt_p50") is not None}
    rtt_servers = sorted({k.split("-")[1] for k in rtt})
    per_server_rtt = {s: median(v for k, v in rtt.items() if k.split("-")[1] == s) for s in rtt_servers}
    for s in sorted(set(servers) | set(rtt_servers)):  # slow to receive (push delay) or to answer (pull RTT)
        for metric, values in (("push delay p50", per_server), ("pull round trip p50", per_server_rtt)):
            ratio = lags(values, s, threshold) if s in values else None
            if ratio is not None:
                found.append({"role": "server", "id": int(s), "metric": metric, "ratio": round(ratio, 2)})
                break
    for s in servers:
        same_server = {k: v for k, v in delay.items() if k.split("-")[1] == s}
        for key in same_server:
            ratio = lags(same_server, key, threshold)
            if ratio is not None:
                found.append({"role": "link", "id": key, "metric": "push delay p50", "ratio": round(ratio, 2)})
    return found
