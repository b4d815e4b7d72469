"""Recovery from checkpoints: a killed server restarts from its own and the workers reconnect; a stopped run
continues from its servers' (`weaksync train --resume RUN_DIR`): the step budget, versions, optimizer state
and data position go on, and it ends where an unstopped run ends."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import events, only_run_dir, small_config, trained_checkpoint, wait_for, weaksync_cli

from weaksync.config import ConfigError
from weaksync.runtime.launcher import resume_config, run_local
from weaksync.runtime.spec import checkpoint_file

pytestmark = pytest.mark.e2e

STEPS = 300  # per worker: the stopped run is cut at about a third of it


def _kill_a_server_and_a_worker(proc, run_dir: Path) -> float:
    """SIGKILL server 0 once it has a checkpoint, then worker 2 once server 0 restored it; returns the
    server's kill time."""
    wait_for(lambda: proc.poll() is not None or trained_checkpoint(run_dir), 60, "a checkpoint of a trained θ")
    killed_at = time.time()
    os.kill(next(e["pid"] for e in events(run_dir, "server-0") if e["ev"] == "start"), signal.SIGKILL)
    restored = lambda: any(e["ev"] == "restored" for e in events(run_dir, "server-0"))  # noqa: E731
    wait_for(lambda: proc.poll() is not None or restored(), 30, "server 0 to restore its checkpoint")
    os.kill(next(e["pid"] for e in events(run_dir, "worker-2") if e["ev"] == "start"), signal.SIGKILL)
    rejoined = lambda: any(e["ev"] == "rejoin" and e["w"] == 2 for e in events(run_dir, "server-1"))  # noqa: E731
    wait_for(lambda: proc.poll() is not None or rejoined(), 30, "worker 2's new process to rejoin")
    assert proc.poll() is None, proc.communicate()
    return killed_at


def test_killed_roles_come_back_and_a_stopped_run_resumes_to_the_same_accuracy(tmp_path: Path) -> None:
    """One run, three recoveries. A SIGKILLed server restarts from its last checkpoint on its old port and
    the workers reconnect (on_server_failure=restart, the default); a SIGKILLed worker rejoins
    (on_worker_failure=restart). Then Ctrl-C, and `--resume` goes on from the checkpoints: the same
    accuracy as a run without any of it."""
    stopped_dir = tmp_path / "stopped"
    proc = weaksync_cli(
        "train", "--mode", "bsp", "--steps", str(STEPS), "--quiet", "--out-dir", str(stopped_dir),
        "--set", "checkpoint.interval=0.5", "--set", "train.eval_interval=0.5", "--on-worker-failure", "restart",
    )  # fmt: skip
    wait_for(lambda: proc.poll() is not None or only_run_dir(stopped_dir).exists(), 30, "the run directory")
    run_dir = only_run_dir(stopped_dir)
    killed_at = _kill_a_server_and_a_worker(proc, run_dir)
    steps = lambda: sum(1 for e in events(run_dir, "worker-0") if e["ev"] == "step")  # noqa: E731
    wait_for(lambda: proc.poll() is not None or steps() >= STEPS // 3, 90, "a third of the steps")
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)

    server_0 = events(run_dir, "server-0")
    assert min(next(e for e in server_0 if e["ev"] == "restored")["versions"].values()) >= 1  # not θ₀
    assert min(e["t"] for e in server_0 if e["ev"] == "update" and e["t"] > killed_at) - killed_at <= 10.0
    back = {e["w"] for w in (0, 1, 3) for e in events(run_dir, f"worker-{w}") if e["ev"] == "server-back"}
    assert back == {0, 1, 3}  # every live worker reconnected to the restarted server
    recovery = json.loads((run_dir / "summary.json").read_text())["recovery"]
    assert (recovery["servers"], recovery["workers"]) == (1, 1), recovery
    assert all(r["back_after"] is not None for r in recovery["events"]), recovery

    cores = [torch.load(checkpoint_file(run_dir, s), weights_only=False)["core"] for s in (0, 1)]
    done = [core["clocks"] for core in cores]  # where each worker goes on from
    # the budget counts steps done (a rejoining worker's jump to the slowest clock is not one); servers
    # checkpoint on their own, and the run goes on from the most steps any server saw
    total = max(sum(core["steps"].values()) for core in cores)
    assert 0 < total < 4 * STEPS, "the stop came after the end: nothing left to resume"

    resumed = run_local(resume_config(run_dir, {"run.out_dir": str(tmp_path / "resumed")})).summary
    assert resumed["worker_status"] == {str(w): "done" for w in range(4)}
    assert abs(resumed["steps"] - (4 * STEPS - total)) <= 8, (resumed["steps"], total)  # only what was left
    first = min(e["step"] for e in events(only_run_dir(tmp_path / "resumed"), "worker-0") if e["ev"] == "step")
    assert first == max(clocks[0] for clocks in done), "worker 0 did not go on from its own step count"

    reference = run_local(small_config(tmp_path / "reference", **{"sync.mode": "bsp", "train.steps": STEPS})).summary
    assert abs(resumed["final_accuracy"] - reference["final_accuracy"]) <= 0.01, (resumed, reference)


def test_resume_needs_a_checkpoint_of_every_server(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        resume_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("cluster: {servers: 2}\n")
    with pytest.raises(ConfigError, match=r"no checkpoint of server\(s\) \[0, 1\]"):
        run_local(resume_config(run_dir))


def test_a_script_run_resumes_from_the_cli_with_its_recorded_script(tmp_path: Path, capsys, monkeypatch) -> None:
    """`weaksync run --resume RUN_DIR` reruns the script (and arguments) the run recorded and goes on from its
    checkpoints: a finished 60-step run, resumed with a 120-step budget, trains only the 60 steps left."""
    import json
    import sys

    import weaksync
    from weaksync.cli.main import main
    from weaksync.runtime.launcher import recorded_script

    script = Path(__file__).resolve().parents[1] / "examples" / "regression.py"
    cfg = small_config(tmp_path / "first", **{"sync.mode": "bsp", "train.steps": 60})
    first = weaksync.run(script, ["--unused-by-the-example"], config=cfg)
    assert recorded_script(first.run_dir) == weaksync.runtime.launcher.Script(str(script), ("--unused-by-the-example",))

    argv = ["weaksync", "run", "--resume", str(first.run_dir), "--steps", "120", "--quiet",
            "--out-dir", str(tmp_path / "resumed")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        main()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    run_dir = only_run_dir(tmp_path / "resumed")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["worker_status"] == {str(w): "done" for w in range(4)}
    done = [torch.load(checkpoint_file(first.run_dir, s), weights_only=False)["core"]["clocks"] for s in (0, 1)]
    total = max(sum(clocks.values()) for clocks in done)  # about 4 × 60: a worker may have begun one more
    assert abs(summary["steps"] - (4 * 120 - total)) <= 8, (summary["steps"], total)  # only what was left
    first_step = min(e["step"] for e in events(run_dir, "worker-0") if e["ev"] == "step")
    assert first_step == max(clocks[0] for clocks in done) and 59 <= first_step <= 62
    assert summary["metric"]["final"] < 0.25, summary["metric"]
    assert json.loads((run_dir / "meta.json").read_text())["script_args"] == ["--unused-by-the-example"]


def test_resuming_a_train_run_as_a_script_names_the_fix(tmp_path: Path) -> None:
    from weaksync.runtime.launcher import recorded_script

    (tmp_path / "meta.json").write_text('{"mode": "bsp"}')
    with pytest.raises(ConfigError, match=r"names no script\): name the script to run"):
        recorded_script(tmp_path)
