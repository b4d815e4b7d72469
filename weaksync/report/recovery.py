"""What the faults of a run cost: each restart the launcher made, how long until the restarted role was back at
work, and for a server how many versions of its blocks the restart took back (updates made after its last
checkpoint, lost with the process)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _first_after(events: list[dict[str, Any]], kind: str, t: float) -> dict[str, Any] | None:
    return min((e for e in events if e["ev"] == kind and e["t"] > t), key=lambda e: e["t"], default=None)


def _versions_lost(server_log: list[dict[str, Any]], steps: list[dict[str, Any]], t: float) -> int:
    """Versions of this server's blocks made before its restart at `t` that its restore went back on: the
    newest each block reached (by its own log, or as workers installed it: the killed process's last log
    lines may be lost) minus the version its checkpoint held (0 without one)."""
    start = max((e for e in server_log if e["ev"] == "start" and e["t"] <= t), key=lambda e: e["t"], default=None)
    if start is None:
        return 0
    blocks = start["blocks"]
    newest = dict.fromkeys(blocks, 0)
    for e in server_log:
        if e["ev"] == "update" and e["t"] <= t and e["j"] in newest:
            newest[e["j"]] = max(newest[e["j"]], e["v"])
    for e in steps:
        if e["t"] <= t:
            for j in blocks:
                if j < len(e["versions"]):
                    newest[j] = max(newest[j], e["versions"][j])
    restored = _first_after(server_log, "restored", t)
    kept = {int(j): v for j, v in restored["versions"].items()} if restored else {}
    return sum(max(0, newest[j] - kept.get(j, 0)) for j in blocks)


def recovery_section(
    launcher_log: list[dict[str, Any]], logs: dict[str, list[dict[str, Any]]], start: float | None
) -> dict[str, Any]:
    """`logs`: each role's events by process name (server-0, worker-1, ...). A restart's `back_after` runs
    from the launcher seeing the process gone to the new one's first update (server) or step (worker); None
    when the run ended first."""
    steps = [e for name, log in logs.items() if name.startswith("worker-") for e in log if e["ev"] == "step"]
    restarts = []
    for r in sorted((e for e in launcher_log if e["ev"] == "restart"), key=lambda e: e["t"]):
        log = logs.get(r["name"], [])
        server = r["name"].startswith("server-")
        back = _first_after(log, "update" if server else "step", r["t"])
        restarts.append(
            {
                "name": r["name"],
                "t": r["t"] - start if start is not None else None,
                "why": r["why"],
                "back_after": back["t"] - r["t"] if back else None,
                "versions_lost": _versions_lost(log, steps, r["t"]) if server else None,
            }
        )
    back = [r["back_after"] for r in restarts if r["back_after"] is not None]
    return {
        "restarts": len(restarts),
        "servers": sum(r["name"].startswith("server-") for r in restarts),
        "workers": sum(r["name"].startswith("worker-") for r in restarts),
        "back_after_p50": float(np.percentile(back, 50)) if back else None,
        "back_after_p95": float(np.percentile(back, 95)) if back else None,
        "back_after_max": max(back, default=None),
        "versions_lost": sum(r["versions_lost"] or 0 for r in restarts),
        "events": restarts,
    }
