"""The DDP baseline: trains digits, writes a run directory weaksync's summary reads, equals single-process
SGD on the union of the ranks' minibatches, and honours the straggler delay model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import events, small_config
from torch import nn
from torch.utils.data import TensorDataset

from weaksync.bench.ddp import FINAL_MODEL, run_ddp
from weaksync.config import load_config
from weaksync.runtime.launcher import RunFailed
from weaksync.training.data import BatchStream, shard_indices
from weaksync.training.optim import make_optimizer
from weaksync.training.schedule import lr_at
from weaksync.training.workload import Workload, seed_model_init

pytestmark = pytest.mark.e2e

N, STEPS, BATCH, SEED = 2, 5, 6, 3


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def toy_data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 4, (96,), generator=g)
    return TensorDataset(x, y), TensorDataset(x[:32], y[:32])


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    base = {"cluster.workers": N, "train.steps": 100, "train.eval_interval": 0.5}
    return {
        "plain": run_ddp(small_config(tmp, **base, **{"run.name": "plain"})),
        "slow": run_ddp(small_config(tmp, **base, **{"run.name": "slow", "scenario": "slow-worker-x4"})),
    }


def test_ddp_trains_digits_and_writes_a_weaksync_run_dir(digits_runs: dict) -> None:
    result = digits_runs["plain"]
    s, run_dir = result.summary, result.run_dir
    assert s["mode"] == "ddp" and s["num_servers"] == 0 and s["k"] == N
    assert s["steps"] == N * 100
    assert s["final_accuracy"] >= 0.8, s["final_accuracy"]
    assert s["worker_status"] == {"0": "done", "1": "done"}
    assert s["evaluations"] >= 1 and s["steps_per_s"] > 0
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == N * 100
    assert (run_dir / "config.yaml").exists()
    for w in range(N):
        steps = [e for e in events(run_dir, f"worker-{w}") if e["ev"] == "step"]
        assert [e["step"] for e in steps] == list(range(100))
        assert all(e["t"] <= e["t_end"] <= e["t_push"] for e in steps)
    evals = [e for e in events(run_dir, "evaluator") if e["ev"] == "eval"]
    assert evals[-1]["final"] and not any(e["final"] for e in evals[:-1])
    assert [e["t"] for e in evals] == sorted(e["t"] for e in evals)


def test_slow_worker_scenario_slows_every_rank(digits_runs: dict) -> None:
    plain, slow = digits_runs["plain"].summary, digits_runs["slow"].summary
    procs = {w: json.loads((digits_runs["slow"].run_dir / "procs" / f"worker-{w}.json").read_text()) for w in range(N)}
    assert procs[0]["injected_seconds"] == 0 and procs[1]["injected_seconds"] > 0
    assert slow["steps_per_s"] < 0.75 * plain["steps_per_s"], (slow["steps_per_s"], plain["steps_per_s"])
    # the fast rank waits in the all-reduce for the slow one: synchronous SGD runs at the straggler's pace
    fast = slow["workers"]["0"]["steps_per_s"]
    assert abs(fast - slow["workers"]["1"]["steps_per_s"]) / fast < 0.1


def test_ddp_equals_single_process_sgd_on_the_union_of_minibatches(tmp_path: Path) -> None:
    overrides = {
        "run.out_dir": str(tmp_path),
        "run.name": "eq",
        "run.seed": SEED,
        "cluster.workers": N,
        "train.steps": STEPS,
        "train.batch_size": BATCH,
        "optim.lr": 0.1,
        "optim.nesterov": True,
        "optim.weight_decay": 1e-3,
        "optim.schedule": "cosine",
        "optim.warmup_steps": 2,
        "timeouts.shutdown": 5.0,
    }
    config = load_config(None, overrides)
    result = run_ddp(config, Workload(model_fn=mlp, data_fn=toy_data))
    got = torch.load(result.run_dir / FINAL_MODEL)

    seed_model_init(SEED)
    model = mlp()
    opt = make_optimizer(config.optim, list(model.parameters()))
    train, _ = toy_data()
    streams = [BatchStream(train, shard_indices(len(train), N, w, SEED), BATCH, seed=SEED * 7919 + w) for w in range(N)]
    o = config.optim
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, base_lr=o.lr, total_steps=STEPS, schedule=o.schedule,
                                warmup_steps=o.warmup_steps, step_size=o.step_size, gamma=o.gamma)  # fmt: skip
        parts = [next(s) for s in streams]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    want = model.state_dict()
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0)
    assert result.summary["steps"] == N * STEPS


def test_a_failing_rank_stops_the_run_with_one_line(tmp_path: Path) -> None:
    config = small_config(tmp_path, **{"cluster.workers": N, "train.steps": 5, "run.name": "bad"})
    with pytest.raises(RunFailed) as info:
        run_ddp(config, Workload(model_fn=mlp, data_fn=toy_data, loss_fn=_bad_loss))
    message = str(info.value)
    assert "\n" not in message and message.startswith("worker-1 stopped unexpectedly") and "on purpose" in message
    # the cause's record is always there; its peer dies in the all-reduce (gloo error, SIGTERM or SIGKILL)
    procs = tmp_path / "runs" / "bad" / "procs"
    assert json.loads((procs / "worker-1.json").read_text())["status"] == "failed"
    for p in procs.glob("worker-*.json"):
        assert not _alive(json.loads(p.read_text())["pid"]), f"{p.stem} outlived the run"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _bad_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rank 1 fails at its first step while rank 0 goes on into the all-reduce, where it would wait."""
    if torch.distributed.get_rank() == 1:
        raise RuntimeError("loss_fn failed on purpose")
    return nn.functional.cross_entropy(output, target)


def test_the_ddp_delay_follows_time_windowed_rules() -> None:
    """The baseline's injected delay sees the seconds since its first step, as weaksync's roles do (the
    changing scenarios, e.g. spike-burst, are time windows)."""
    import time

    from weaksync.bench.ddp import _DelayState
    from weaksync.stragglers.delays import StragglerRule, delayer_for

    rule = StragglerRule(target="worker", ids=[0], delay={"kind": "constant", "seconds": 0.01}, start_s=0.5)
    state = _DelayState(delayer_for([rule], "worker", 0, 0))
    state.begin(0, time.time())
    state.before_reduce()
    assert state.injected == 0.0  # 0 s into the run: before the window
    state.first = time.time() - 1.0  # as if the first step was a second ago
    state.begin(1, time.time())
    state.before_reduce()
    assert state.injected == pytest.approx(0.01)
