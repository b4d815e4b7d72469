"""The other ways in: torchrun on one host, and the Python API with a user's own model and data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import events, trained_checkpoint, wait_for

from weaksync.transport.security import RunKeys

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, *args: str, restarts: int = 0) -> list[str]:
    """A one-host torchrun command line for the weaksync entry."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "--max-restarts", str(restarts), "-m", "weaksync.runtime.torchrun", *args]  # fmt: skip


def write_config(tmp_path: Path, workers: int, servers: int, steps: int, keys: bool = True, extra: str = "") -> Path:
    """A launch's config; its CURVE keys written as `weaksync keys` writes them."""
    config = tmp_path / "run.yaml"
    security = ""
    if keys:
        RunKeys.generate(workers).write(tmp_path / "keys")
        security = f"security: {{keys: '{tmp_path / 'keys'}'}}\n"
    config.write_text(
        f"cluster: {{workers: {workers}, servers: {servers}}}\ntrain: {{steps: {steps}, eval_interval: 0.5}}\n"
        f"run: {{out_dir: '{tmp_path / 'runs'}'}}\n{security}{extra}"
    )
    return config


def test_torchrun_one_launch_trains_and_a_killed_server_restores_its_checkpoint(tmp_path: Path) -> None:
    """torchrun --max-restarts 1: a SIGKILLed server restarts the launch; the new round's server restores its
    checkpoint, the workers resume from their step counts in it, and the run ends on its budget."""
    config = write_config(tmp_path, workers=3, servers=1, steps=120, extra="checkpoint: {interval: 0.5}\n")
    run_dir = tmp_path / "runs" / "tr"
    proc = subprocess.Popen(torchrun(4, "--config", str(config), "--run-id", "tr", restarts=1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: proc.poll() is not None or trained_checkpoint(run_dir), 120, "a checkpoint of a trained θ")
    os.kill(next(e["pid"] for e in events(run_dir, "server-0") if e["ev"] == "start"), signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    restored = [e for e in events(run_dir, "server-0") if e["ev"] == "restored"]
    assert len(restored) == 1 and restored[0]["restart"] == 1 and min(restored[0]["versions"].values()) >= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["worker_status"] == {"0": "done", "1": "done", "2": "done"}
    budget = [e["steps"] for e in events(run_dir, "server-0") if e["ev"] == "budget"]
    assert budget and 3 * 120 <= budget[-1] <= 3 * 120 + 6  # the budget counts each step once, redone or not
    assert summary["final_accuracy"] >= 0.8


def test_torchrun_world_size_mismatch_and_missing_keys_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run(torchrun(2, "--set", f"run.out_dir={tmp_path}"), capture_output=True, text=True,
                            timeout=240)  # fmt: skip
    assert result.returncode != 0
    assert "torchrun started 2 processes but cluster.servers + cluster.workers = 6" in result.stderr
    config = write_config(tmp_path, workers=1, servers=1, steps=10, keys=False)
    result = subprocess.run(torchrun(2, "--config", str(config)), capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "weaksync: error: security.keys: a torchrun launch needs the run's keys" in result.stderr
    assert "weaksync/runtime" not in result.stderr  # no traceback of ours (torchrun prints its own summary)


def test_torchrun_servers_and_workers_as_two_launches(tmp_path: Path) -> None:
    """The recommended multi-host layout: a worker launch can fail and restart without touching servers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, workers=2, servers=1, steps=100)

    def launch(role: str, nproc: int) -> subprocess.Popen:
        args = ["--config", str(config), "--role", role, "--store", f"127.0.0.1:{port}", "--run-id", "two"]
        return subprocess.Popen(torchrun(nproc, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    servers = launch("server", 1)
    workers = launch("worker", 2)
    _, werr = workers.communicate(timeout=240)
    _, serr = servers.communicate(timeout=120)
    assert workers.returncode == 0, werr[-3000:]
    assert servers.returncode == 0, serr[-3000:]
    summary = json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())
    assert summary["worker_status"] == {"0": "done", "1": "done"} and 200 <= summary["steps"] <= 204


def test_python_api_example_trains_a_custom_model(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "examples" / "custom_model.py"), "--steps", "150", "--out-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(result.stdout.split("final accuracy ")[1].split(",")[0])
    assert accuracy >= 0.9
