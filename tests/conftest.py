"""Shared helpers for the multi-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from weaksync.config import Config, load_config


def small_config(tmp_path: Path, **overrides: Any) -> Config:
    """A short digits run writing under tmp_path; overrides are dotted keys."""
    base = {
        "run.out_dir": str(tmp_path / "runs"),
        "train.steps": 160,
        "train.eval_interval": 0.5,
        "timeouts.shutdown": 5.0,
    }
    return load_config(None, {**base, **overrides})


def weaksync_cli(*args: str, **kwargs: Any) -> subprocess.Popen:
    """Start `weaksync ...` in its own session, so a test can signal its whole process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "weaksync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def session_processes(sid: int) -> list[psutil.Process]:
    """Processes still alive in a session (what a Ctrl-C to that terminal would have reached)."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def events(run_dir: Path, name: str) -> list[dict[str, Any]]:
    """A role's records, an update of several blocks as one record per block (`per_block`)."""
    from weaksync.records.eventlog import per_block, read_events

    path = run_dir / "events" / f"{name}.jsonl"
    return list(per_block(read_events(path))) if path.exists() else []


def trained_checkpoint(run_dir: Path, server: int = 0) -> bool:
    """Has the server written a checkpoint after its first update (not one of θ₀, before training began)?"""
    return any(e["ev"] == "checkpoint" and e["updates"] > 0 for e in events(run_dir, f"server-{server}"))


def only_run_dir(parent: Path) -> Path:
    dirs = [d for d in parent.iterdir() if d.is_dir()] if parent.exists() else []
    return dirs[0] if len(dirs) == 1 else Path("/nonexistent")


def linear_store(cfg: Any, inputs: int, num_workers: int, quorum: int, clip: float | None = None) -> Any:
    """One server's BlockStore for a bias-free `nn.Linear(inputs, 1)` in one block: the smallest θ on
    which a test can read an update's step directly."""
    from torch import nn

    from weaksync.runtime.blockstore import BlockStore
    from weaksync.runtime.flat import block_values, model_layout
    from weaksync.training.optim import lr_function, optimizer_factory

    model = nn.Linear(inputs, 1, bias=False)
    layout = model_layout(model, 1, 1)
    initial = block_values(model, layout, layout.blocks_of(0))
    lr = lr_function(cfg, 10, num_workers, quorum)
    return BlockStore(layout, 0, initial, optimizer_factory(cfg), lr, clip=clip)
