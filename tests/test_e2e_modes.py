"""Real multi-process runs on digits with a BatchNorm CNN: every mode trains, obeys its thresholds, uses its
gradients, saves a loadable model, and leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import events, small_config

from weaksync.core.auto import staleness_bound
from weaksync.runtime.launcher import run_local
from weaksync.runtime.spec import FINAL_MODEL
from weaksync.training.models import build_model

pytestmark = pytest.mark.e2e

MODES = ["auto", "bsp", "backup", "partial-pull", "partial", "ssp", "async"]


def _pids(run_dir: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in (run_dir / "procs").glob("*.json")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("mode", MODES)
def test_mode_trains_and_obeys_thresholds(tmp_path: Path, mode: str) -> None:
    """One run per mode carries every check of that mode; async's run also evaluates after training."""
    deferred = {"train.eval_live": False, "train.eval_interval": 0.2} if mode == "async" else {}
    result = run_local(small_config(tmp_path, **{"sync.mode": mode, "model.name": "digits-cnn-bn", **deferred}))
    s, run_dir = result.summary, result.run_dir
    assert s["final_accuracy"] >= 0.8, s["final_accuracy"]
    model = build_model("digits-cnn-bn", 10, 1, 8)
    model.load_state_dict(torch.load(run_dir / FINAL_MODEL))  # a standard state_dict, BatchNorm statistics in it
    assert not torch.allclose(model.features[1].running_var, torch.ones(32)), "BatchNorm statistics never updated"
    used = s["gradients"]["used_share"]
    assert 0 < used <= 1 and s["gradients"]["computed"] == s["steps"] * s["num_blocks"]
    if mode != "backup":  # repeated pushes are added to their round, not dropped; backup drops N-k by design
        assert s["contributions"]["drops_by_reason"].get("duplicate", 0) == 0
    assert s["worker_status"] == {str(w): "done" for w in range(4)}
    assert 4 * 160 <= s["steps"] <= 4 * 160 + 4 * 2  # the budget; a step in flight may finish
    assert all(not _alive(pid) for pid in _pids(run_dir)), "a process outlived the run"
    frozen = [json.loads(p.read_text())["gc_frozen_objects"] for p in (run_dir / "procs").glob("*.json")]
    assert len(frozen) == 6 and min(frozen) > 10_000, "a role did not freeze the objects it shares with the forkserver"
    assert (run_dir / "config.yaml").exists() and s["evaluations"] >= 1
    # coalesced: one push message per server and step, whatever the number of blocks
    assert s["num_blocks"] > s["num_servers"] and s["traffic"]["push_msgs"] == s["steps"] * s["num_servers"]

    first_end = min(e["t"] for w in range(4) for e in events(run_dir, f"worker-{w}") if e["ev"] == "end")
    updates = [e for n in ("server-0", "server-1") for e in events(run_dir, n) if e["ev"] == "update"]
    k, tau, n, warmup = s["k"], s["tau"], s["num_workers"], s["sync_warmup"]
    assert warmup == (32 if mode in ("ssp", "async") else 0)  # the default 20 % of 160 steps, ssp/async only
    for u in updates:
        workers = [w for w, _ in u["contributors"]]
        assert len(workers) == len(set(workers)), "a worker contributed twice to one update"
        if u["t"] < first_end:  # once a worker finished, the quorum is capped at those still running
            # the k in force when the round closed (auto moves it); auto's cut may close a round short of it
            assert len(workers) >= u["k"] or (mode == "auto" and u["by_deadline"])
            assert mode == "auto" or u["k"] == (n if u["v"] <= warmup else k), "the synchronous warm-up: k = N"
        if u["v"] <= warmup:  # made as bsp makes them: every worker, on the version before
            assert len(workers) == n and all(base == u["v"] - 1 for _, base in u["contributors"])
        if mode == "auto":
            tau = staleness_bound(n, 1)  # the largest τ auto can choose (it follows k)
        if tau is not None:
            assert all(u["v"] - 1 - base <= tau for _, base in u["contributors"])
    if mode == "bsp":
        # every update has all N workers until the budget (160 steps each) is spent; a step already in flight
        # then may be applied with the workers that had pushed it, once the others said bye
        assert all(len(u["contributors"]) == n for u in updates if u["v"] <= 160)
        assert s["contributions"]["drops_by_reason"] == {}
    versions_seen = {}
    for w in range(4):
        for e in events(run_dir, f"worker-{w}"):
            if e["ev"] == "step":
                prev = versions_seen.get(w)
                if prev is not None:
                    assert all(a <= b for a, b in zip(prev, e["versions"])), "local versions went back"
                versions_seen[w] = e["versions"]
    if mode == "bsp":
        steps = [e for e in events(run_dir, "worker-0") if e["ev"] == "step"]
        assert all(e["versions"] == [e["step"]] * s["num_blocks"] for e in steps)
    if deferred:
        check_deferred_evaluation(s, run_dir)


def check_deferred_evaluation(s: dict, run_dir: Path) -> None:
    """With train.eval_live off, snapshots are taken during training and evaluated after the last worker ended,
    stamped with the time they were taken."""
    last_end = max(e["t"] for w in range(4) for e in events(run_dir, f"worker-{w}") if e["ev"] == "end")
    evals = [e for e in events(run_dir, "evaluator") if e["ev"] == "eval"]
    assert len(evals) >= 3 and evals[-1]["final"]
    assert all(e["t_done"] > last_end for e in evals), "a snapshot was evaluated while training ran"
    assert any(e["t"] < last_end for e in evals), "no snapshot was taken during training"
    assert s["evaluations"] == len(evals)


def test_auto_sheds_a_slow_worker_and_says_why(tmp_path: Path) -> None:
    """auto under a ×4 slow worker: both servers lower k to 3, and summary.json holds each change's reason."""
    result = run_local(small_config(tmp_path, **{"sync.mode": "auto", "scenario": "slow-worker-x4"}))
    s = result.summary
    assert s["final_accuracy"] >= 0.8
    assert s["quorums"]["k"] == {"0": 3, "1": 3}, s["quorums"]
    servers = [c for c in s["quorums"]["changes"] if c["who"].startswith("server")]
    assert {c["who"] for c in servers} == {"server-0", "server-1"}
    assert all(c["value"] < c["previous"] and "beats k=4" in c["reason"] for c in servers[:2])
    assert all(0 <= c["t"] <= s["train_seconds"] for c in s["quorums"]["changes"])
