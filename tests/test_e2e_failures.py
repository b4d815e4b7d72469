"""Failures end cleanly: Ctrl-C, a killed worker, a refused worker. No process outlives the launcher."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import events, only_run_dir, session_processes, small_config, wait_for, weaksync_cli
from torch import nn

from weaksync.runtime.launcher import RunFailed, run_local
from weaksync.training.workload import Workload, _builtin_data

pytestmark = pytest.mark.e2e

LONG_RUN = ["train", "--steps", "100000", "--quiet", "--set", "timeouts.shutdown=5"]


def _step_count(run_dir: Path, name: str) -> int:
    return sum(1 for e in events(run_dir, name) if e["ev"] == "step")


def _start_and_wait_for_steps(tmp_path: Path, *extra: str):
    proc = weaksync_cli(*LONG_RUN, "--out-dir", str(tmp_path), *extra)
    wait_for(
        lambda: proc.poll() is not None or _step_count(only_run_dir(tmp_path), "worker-1") > 0,
        60,
        "the first logged worker step",
    )
    assert proc.poll() is None, proc.communicate()
    return proc, only_run_dir(tmp_path)


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    proc, _ = _start_and_wait_for_steps(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (1, 130), err
    assert "interrupted" in err
    wait_for(lambda: not session_processes(proc.pid), 15, "every process of the run to exit")


@pytest.mark.parametrize("delay", [0.3, 1.2, 2.5])  # imports, the store and forkserver, roles starting
def test_ctrl_c_during_start_up_is_one_line_and_leaves_nothing(tmp_path: Path, delay: float) -> None:
    proc = weaksync_cli(*LONG_RUN, "--out-dir", str(tmp_path))
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    exited = time.monotonic()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode in (1, 130), err
    assert len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err, err
    left = session_processes(proc.pid)
    while left and time.monotonic() - exited < 2.0:
        time.sleep(0.05)
        left = session_processes(proc.pid)
    assert not left, f"still running 2 s after the launcher exited: {[p.cmdline()[:3] for p in left]}"


def test_sigterm_to_launcher_alone_stops_every_process(tmp_path: Path) -> None:
    proc, _ = _start_and_wait_for_steps(tmp_path)
    proc.terminate()  # only the launcher: its children must not be orphaned
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not session_processes(proc.pid), 15, "every process of the run to exit")


def test_killed_worker_stops_the_run_with_a_clear_message(tmp_path: Path) -> None:
    proc, run_dir = _start_and_wait_for_steps(tmp_path)
    pid = next(e["pid"] for e in events(run_dir, "worker-1") if e["ev"] == "start")
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    line = err.strip().splitlines()[-1]
    assert "worker-1 stopped unexpectedly (killed by SIGKILL)" in line, err
    wait_for(lambda: not session_processes(proc.pid), 15, "every process of the run to exit")


def test_killed_worker_with_continue_lets_the_others_finish(tmp_path: Path) -> None:
    steps = 150
    proc = weaksync_cli(
        "train",
        "--steps",
        str(steps),
        "--quiet",
        "--out-dir",
        str(tmp_path),
        "--on-worker-failure",
        "continue",
        "--mode",
        "bsp",
    )
    run_dir_ready = lambda: _step_count(only_run_dir(tmp_path), "worker-2") > 0  # noqa: E731
    wait_for(lambda: proc.poll() is not None or run_dir_ready(), 60, "the first logged worker step")
    run_dir = only_run_dir(tmp_path)
    pid = next(e["pid"] for e in events(run_dir, "worker-2") if e["ev"] == "start")
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    counts = {w: _step_count(run_dir, f"worker-{w}") for w in range(4)}
    assert counts[2] < steps
    assert all(counts[w] > steps for w in (0, 1, 3)), counts  # bsp goes on with three, and makes up the steps
    # the servers ended the run on the whole budget (the killed worker's last, unflushed log lines are lost)
    assert any(e["ev"] == "budget" and e["steps"] >= 4 * steps for e in events(run_dir, "server-0"))
    wait_for(lambda: not session_processes(proc.pid), 15, "every process of the run to exit")


def _model_differs_on_worker_1() -> nn.Module:
    """A model whose shape depends on the process: worker 1 builds a wider one."""
    wide = multiprocessing.current_process().name == "weaksync-worker-1"
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48 if wide else 32), nn.ReLU(), nn.Linear(48 if wide else 32, 10))


def test_worker_with_a_different_model_is_refused_not_hung(tmp_path: Path) -> None:
    workload = Workload(_model_differs_on_worker_1, partial(_builtin_data, "digits", None, 0, 100))
    with pytest.raises(RunFailed, match=r"worker-1 stopped unexpectedly .*layout mismatch"):
        run_local(small_config(tmp_path, **{"model.name": "custom"}), workload)


def test_diverging_run_fails_fast(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, **{"optim.lr": 1e6, "optim.lr_scaling": "none", "sync.mode": "async"})
    with pytest.raises(RunFailed, match="training diverged"):
        run_local(cfg)
