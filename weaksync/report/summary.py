"""Turn a run directory's event logs and per-process figures into `summary.json`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..records.eventlog import per_block, read_events
from ..records.files import write_json
from .recovery import recovery_section
from .slow import find_stragglers


def _events(run_dir: Path, pattern: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((run_dir / "events").glob(pattern)):
        out.extend(per_block(read_events(path)))
    return out


def _logs_by_process(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {path.stem: list(per_block(read_events(path))) for path in sorted((run_dir / "events").glob("*-*.jsonl"))}


def _procs(run_dir: Path, role: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "procs").glob(f"{role}-*.json"))]


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of `values` (None each when there are none): the shape of every timing in a summary."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    arr = np.asarray(values)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)}


def _gradient_use(workers: list[dict[str, Any]], servers: list[dict[str, Any]]) -> dict[str, Any]:
    """Of the block gradients workers computed (steps × B), how many reached an update: accepted into a round
    that was applied, alone or added to the same worker's earlier push (backup drops (N-k)/N by design)."""
    computed = sum(w.get("gradients_computed", 0) for w in workers)
    applied = sum(s.get("gradients_applied", 0) for s in servers)
    return {
        "computed": computed,
        "applied": applied,
        "folded": sum(s.get("folded_pushes", 0) for s in servers),
        "clipped": sum(s.get("clipped_updates", 0) for s in servers),  # ssp/async (optim.gradient_clip)
        "used_share": applied / computed if computed else None,
    }


def _quorums(
    choices: list[dict[str, Any]], servers: list[dict[str, Any]], workers: list[dict[str, Any]], start: float | None
) -> dict[str, Any]:
    """k per server and b per worker at the end, and auto's timeline of changes with their reasons."""
    timeline = []
    for e in choices:
        who = f"server-{e['s']}" if "s" in e else f"worker-{e['w']}"
        fields = {k: e[k] for k in ("name", "value", "previous", "rate_gain", "wait_s", "previous_wait_s", "reason")}
        timeline.append({"t": round(e["t"] - start, 3) if start is not None else None, "who": who, **fields})
    return {
        "k": {str(s["id"]): s.get("k") for s in servers},
        "b": {str(w["id"]): w.get("b") for w in workers},
        "changes": timeline,
    }


def figure(event: dict, name: str) -> float | None:
    """One evaluated figure of an `eval` event (its `metrics`, or a top-level field as the DDP baseline and
    older runs write them)."""
    value = event.get("metrics", {}).get(name, event.get(name))
    return None if value is None else float(value)


def metric_section(evals: list[dict], start: float | None, name: str, goal: str, target: float | None) -> dict:
    """Time-to-target and the curve of any evaluated figure, larger-is-better or smaller-is-better."""
    points = [(e["t"], v) for e in evals if (v := figure(e, name)) is not None]
    better = max if goal == "max" else min
    reached = None
    if target is not None:
        reached = next((t for t, v in points if (v >= target if goal == "max" else v <= target)), None)
    return {
        "name": name,
        "goal": goal,
        "target": target,
        "time_to_target": (reached - start) if reached is not None and start is not None else None,
        "final": points[-1][1] if points else None,
        "best": better((v for _, v in points), default=None),
        "curve": [[round(t - start, 3) if start else None, v] for t, v in points],
    }


def summarize_run(run_dir: Path, config: Config) -> dict[str, Any]:
    """build_summary with the run's own targets."""
    t = config.train
    return build_summary(run_dir, t.target_accuracy, t.metric, t.goal, config.metric_target())


def build_summary(
    run_dir: Path, target_accuracy: float, metric: str = "accuracy", goal: str = "max", target: float | None = None
) -> dict[str, Any]:
    """Everything a user asks after a run: how fast, how accurate, what was dropped, what was sent.
    `metric`, `goal` and `target` name the figure time-to-target follows (train.metric, .goal, .target)."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").exists() else {}
    worker_events, server_events = _events(run_dir, "worker-*.jsonl"), _events(run_dir, "server-*.jsonl")
    steps = [e for e in worker_events if e["ev"] == "step"]
    updates = [e for e in server_events if e["ev"] == "update"]
    evaluator_events = _events(run_dir, "evaluator.jsonl")
    evals = sorted((e for e in evaluator_events if e["ev"] == "eval"), key=lambda e: e["t"])
    for e in evaluator_events:  # what the evaluator measured: a script's own metric overrides the config's
        if e["ev"] == "metric":
            metric, goal, target = e["name"], e["goal"], e["target"]
    servers, workers = _procs(run_dir, "server"), _procs(run_dir, "worker")

    start = min((e["t"] for e in steps), default=None)
    end = max((e["t_push"] for e in steps), default=None)
    wall = (end - start) if start is not None and end is not None else None
    by_worker: dict[int, list[dict]] = {}
    for e in steps:
        by_worker.setdefault(e["w"], []).append(e)
    step_intervals: list[float] = []
    per_worker = {}
    for w, evs in sorted(by_worker.items()):
        evs.sort(key=lambda e: e["step"])
        starts = [e["t"] for e in evs]
        intervals = list(np.diff(starts)) if len(starts) > 1 else []
        step_intervals += intervals
        compute = [e["t_end"] - e["t"] for e in evs]
        span = evs[-1]["t_push"] - evs[0]["t"]
        per_worker[str(w)] = {
            "steps": len(evs),
            "steps_per_s": len(evs) / span if span > 0 else None,
            "step_time": percentiles(intervals),
            "compute_time": percentiles(compute),
            "wait_time": percentiles([e["wait"] for e in evs[1:]]),
        }
    staleness = Counter()
    for u in updates:
        for _, base in u["contributors"]:
            staleness[u["v"] - 1 - base] += 1
    drops: Counter[str] = Counter()
    accepted_by_worker: Counter[str] = Counter()
    dropped_by_worker: Counter[str] = Counter()
    for s in servers:
        drops.update(s["drops"])
        accepted_by_worker.update({str(k): v for k, v in s["accepted_by_worker"].items()})
        dropped_by_worker.update({str(k): v for k, v in s["dropped_by_worker"].items()})
    for w, stats in per_worker.items():
        total = accepted_by_worker[w] + dropped_by_worker[w]
        stats["accepted_share"] = accepted_by_worker[w] / total if total else None

    links: dict[str, dict] = {}
    for w in workers:
        for s_id, link in w.get("links", {}).items():
            links[f"{w['id']}-{s_id}"] = {"push_bytes": link["push_bytes"], "reply_bytes": link["reply_bytes"],
                                         "pull_rtt_p50": link["rtt_p50"], "pull_rtt_p95": link["rtt_p95"]}  # fmt: skip
    for s in servers:
        for w_id, link in s.get("links_in", {}).items():
            links.setdefault(f"{w_id}-{s['id']}", {}).update(
                {"push_delay_p50": link["push_delay_p50"], "push_delay_p95": link["push_delay_p95"]}
            )

    choices = sorted((e for e in worker_events + server_events if e["ev"] == "choice"), key=lambda e: e["t"])
    accuracy = metric_section(evals, start, "accuracy", "max", target_accuracy)
    num_steps = len(steps)
    summary = {
        "run": run_dir.name,
        **meta,
        "steps": num_steps,
        "train_seconds": wall,
        "steps_per_s": num_steps / wall if wall else None,
        "step_time": percentiles(step_intervals),
        "target_accuracy": target_accuracy,
        "time_to_accuracy": accuracy["time_to_target"],
        "final_accuracy": accuracy["final"],
        "best_accuracy": accuracy["best"],
        "evaluations": len(evals),
        "accuracy_curve": accuracy["curve"],
        "metric": metric_section(evals, start, metric, goal, target),
        "updates": len(updates),
        "updates_by_deadline": sum(1 for u in updates if u.get("by_deadline")),
        "contributions": {
            "accepted": sum(accepted_by_worker.values()),
            "dropped": sum(dropped_by_worker.values()),
            "drops_by_reason": dict(drops),
        },
        "gradients": _gradient_use(workers, servers),
        "staleness": {str(k): v for k, v in sorted(staleness.items())},
        "quorums": _quorums(choices, servers, workers, start),
        "blocks_per_step": {
            "fresh_mean": float(np.mean([e["fresh"] for e in steps])) if steps else None,
            "stale_mean": float(np.mean([len(e["stale"]) for e in steps])) if steps else None,
        },
        "traffic": {
            "push_msgs": sum(w["push_msgs"] for w in workers),
            "push_bytes": sum(w["push_bytes"] for w in workers),
            "pull_msgs": sum(w["pull_msgs"] for w in workers),
            "reply_msgs": sum(w["reply_msgs"] for w in workers),
            "reply_bytes": sum(w["reply_bytes"] for w in workers),
            "bytes_per_step": (sum(w["push_bytes"] + w["reply_bytes"] for w in workers) / num_steps)
            if num_steps
            else None,
            "msgs_per_step": (sum(w["push_msgs"] + w["pull_msgs"] + w["reply_msgs"] for w in workers) / num_steps)
            if num_steps
            else None,
        },
        "workers": per_worker,
        "links": links,
        "stragglers": find_stragglers(steps, per_worker, links),
        "servers": {
            str(s["id"]): {
                k: s[k]
                for k in (
                    "updates",
                    "accepted",
                    "drops",
                    "bad_messages",
                    "reply_bytes",
                    "state_bytes",
                    "peak_rss_bytes",
                    "injected_reply_delay",
                )
            }
            for s in servers
        },
        "peak_rss_bytes": {f"{p['role']}-{p['id']}": p["peak_rss_bytes"] for p in servers + workers},
        "worker_status": {str(w["id"]): w.get("status") for w in workers},
        "recovery": recovery_section(_events(run_dir, "launcher.jsonl"), _logs_by_process(run_dir), start),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
