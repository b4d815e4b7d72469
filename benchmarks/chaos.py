"""Chaos: a seeded kill loop SIGKILLs servers and workers of a running `weaksync train` at random moments, with
exponential gaps of a given mean (as torchft's chaos tests do). The run must finish, with its accuracy within
1 pt of a fault-free run of the same job, hang nowhere, and leave no process behind.

    python benchmarks/chaos.py --kills 20 --mtbf 2 --steps 1500 --out runs/chaos
    python benchmarks/chaos.py --kills 1 --roles server --first-after 8 --out runs/chaos-one   # one server kill

Each repeat runs the fault-free job and the chaos job back to back (same config and seed), with
`on_worker_failure=restart`, servers restarting from checkpoints every --checkpoint seconds (the default
`on_server_failure=restart`). The kill loop starts at the first logged worker step (plus --first-after) and
kills a role only once its current process has logged its start, so every kill hits a live process of the run;
it picks a server or a worker with even odds, then which one.
Figures per repeat: kills made, restarts, recovery time (from the kill to the role's first update or step
again) p50/p95/max, block versions the restores took back, both accuracies, leftover processes, and whether
the run finished. Results go to OUT/chaos.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from weaksync.records.eventlog import read_events

HANG_LIMIT = 900.0  # seconds a run may take before it counts as hung and is stopped


def log_of(run_dir: Path, name: str) -> list[dict[str, Any]]:
    path = run_dir / "events" / f"{name}.jsonl"
    return list(read_events(path)) if path.exists() else []


def current_pid(run_dir: Path, name: str, killed_at: float) -> int | None:
    """The pid of the role's process that logged its start after the last kill of it (None: not up yet)."""
    starts = [e for e in log_of(run_dir, name) if e["ev"] == "start" and e["t"] > killed_at]
    return starts[-1]["pid"] if starts else None


def session_left(sid: int) -> list[int]:
    left = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return left


def start_run(out: Path, name: str, args: argparse.Namespace) -> subprocess.Popen:
    argv = [
        sys.executable, "-m", "weaksync", "train", "--quiet", "--out-dir", str(out), "--name", name,
        "--steps", str(args.steps), "--seed", str(args.seed), "--on-worker-failure", "restart",
        "--set", f"checkpoint.interval={args.checkpoint}", "--set", f"max_restarts={args.kills + 10}",
        *args.extra,
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, deadline: float) -> tuple[int | None, str]:
    try:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, "hung"


def leftovers(sid: int) -> list[int]:
    """Processes of the run still alive 2 s after its launcher exited."""
    deadline = time.monotonic() + 2.0
    while (left := session_left(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def fault_free(out: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    proc = start_run(out, name, args)
    code, err = finish(proc, time.monotonic() + HANG_LIMIT)
    left = leftovers(proc.pid)
    summary = json.loads((out / name / "summary.json").read_text()) if code == 0 else {}
    return {"rc": code, "error": err.strip()[-300:], "final_accuracy": summary.get("final_accuracy"), "left": left}


def chaos(out: Path, name: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    roles = [f"{r}-{i}" for r in args.roles for i in range(args.servers if r == "server" else args.workers)]
    proc = start_run(out, name, args)
    run_dir = out / name
    started = time.monotonic()
    while proc.poll() is None and not any(e["ev"] == "step" for e in log_of(run_dir, "worker-0")):
        time.sleep(0.05)
    time.sleep(args.first_after)
    kills: list[dict[str, Any]] = []
    last_kill = dict.fromkeys(roles, 0.0)
    next_at = time.monotonic() + rng.expovariate(1.0 / args.mtbf)
    while proc.poll() is None and len(kills) < args.kills and time.monotonic() - started < HANG_LIMIT:
        time.sleep(0.02)
        if time.monotonic() < next_at:
            continue
        victims = [r for r in roles if current_pid(run_dir, r, last_kill[r]) is not None]
        kinds = sorted({v.split("-")[0] for v in victims})
        if not victims:
            continue
        kind = rng.choice(kinds)  # servers and workers alike often, however many of each there are
        victim = rng.choice([v for v in victims if v.startswith(kind)])
        pid = current_pid(run_dir, victim, last_kill[victim])
        assert pid is not None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        last_kill[victim] = time.time()
        kills.append({"name": victim, "pid": pid, "t": last_kill[victim]})
        next_at = time.monotonic() + rng.expovariate(1.0 / args.mtbf)
    code, err = finish(proc, started + HANG_LIMIT)
    left = leftovers(proc.pid)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    back = []
    for kill in kills:  # from the kill to the role's next update (server) or step (worker)
        kind = "update" if kill["name"].startswith("server-") else "step"
        after = [e["t"] for e in log_of(run_dir, kill["name"]) if e["ev"] == kind and e["t"] > kill["t"]]
        kill["back_after"] = min(after) - kill["t"] if after else None
        back += [kill["back_after"]] if after else []
    recovery = summary.get("recovery") or {}
    return {
        "rc": code,
        "error": err.strip()[-300:],
        "kills": len(kills),
        "servers_killed": sum(k["name"].startswith("server-") for k in kills),
        "workers_killed": sum(k["name"].startswith("worker-") for k in kills),
        "restarts": recovery.get("restarts"),
        "back_after_p50": float(np.percentile(back, 50)) if back else None,
        "back_after_p95": float(np.percentile(back, 95)) if back else None,
        "back_after_max": max(back, default=None),
        "versions_lost": recovery.get("versions_lost"),
        "final_accuracy": summary.get("final_accuracy"),
        "train_seconds": summary.get("train_seconds"),
        "left": left,
        "kill_log": kills,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mtbf", type=float, default=2.0, help="mean seconds between kills")
    parser.add_argument("--roles", default="server,worker", help="which roles the loop kills")
    parser.add_argument("--first-after", type=float, default=0.0, help="seconds after the first step before killing")
    parser.add_argument("--steps", type=int, default=1500, help="steps per worker (the run must outlast the kills)")
    parser.add_argument("--checkpoint", type=float, default=5.0, help="checkpoint.interval of the servers")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/chaos"))
    parser.add_argument("extra", nargs="*", help="more `weaksync train` arguments, after --")
    args = parser.parse_args()
    args.roles = args.roles.split(",")
    args.extra = [*args.extra, "--workers", str(args.workers), "--servers", str(args.servers)]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for r in range(args.repeats):
        base = fault_free(args.out, f"fault-free-{r}", args)
        hit = chaos(args.out, f"chaos-{r}", args, seed=args.seed * 1000 + r)
        results.append({"repeat": r, "fault_free": base, "chaos": hit})
        (args.out / "chaos.json").write_text(json.dumps(results, indent=1))
    print("| repeat | kills (servers / workers) | finished | recovery p50 / p95 / max (s) | versions lost "
          "| accuracy chaos / fault-free | processes left |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for res in results:
        c, f = res["chaos"], res["fault_free"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(
            f"| {res['repeat']} | {c['kills']} ({c['servers_killed']} / {c['workers_killed']}) | "
            f"{'yes' if c['rc'] == 0 else 'no: ' + c['error'][-80:]} | "
            f"{fmt(c['back_after_p50'])} / {fmt(c['back_after_p95'])} / {fmt(c['back_after_max'])} | "
            f"{c['versions_lost']} | {fmt(c['final_accuracy'])} / {fmt(f['final_accuracy'])} | "
            f"{len(c['left']) + len(f['left'])} |"
        )


if __name__ == "__main__":
    main()
