"""The shipped examples of weaksync inside a user's own loop (examples/own_loop.py: clipping and a custom
loss; examples/regression.py: a regression model, its own metric, a frozen parameter) train in every mode on
the embedded cluster, and each under torchrun; the saved model reloads and reproduces the run's final metric."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import small_config

import weaksync
from weaksync.runtime.spec import FINAL_MODEL
from weaksync.transport.security import RunKeys

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
MODES = ["auto", "bsp", "backup", "partial-pull", "partial", "ssp", "async"]


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_run(result: weaksync.RunResult, name: str, metric: str) -> None:
    """Every worker finished its share, and the saved model scores what the evaluator measured last."""
    s = result.summary
    assert s["worker_status"] == {str(w): "done" for w in range(4)}, s["worker_status"]
    assert s["metric"]["name"] == metric and s["metric"]["final"] is not None
    module = example(name)
    model = module.build_model()
    model.load_state_dict(result.state_dict())
    model.eval()
    with torch.no_grad():
        if name == "own_loop":
            again = module.accuracy(model, module.digits()[1])[metric]
        else:
            again = module.mse(model, module.curve(500, seed=1))[metric]
    assert again == pytest.approx(s["metric"]["final"], rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_examples_train_in_every_mode(tmp_path: Path, mode: str) -> None:
    cfg = small_config(tmp_path, **{"sync.mode": mode, "train.steps": 120})
    own = weaksync.run(ROOT / "examples" / "own_loop.py", config=cfg)
    check_run(own, "own_loop", "accuracy")
    assert own.summary["final_accuracy"] >= 0.75, own.summary["final_accuracy"]

    reg = weaksync.run(ROOT / "examples" / "regression.py", config=cfg)
    check_run(reg, "regression", "mse")
    m = reg.summary["metric"]
    assert m["goal"] == "min" and m["target"] == 0.05
    assert m["final"] < 0.25, m  # the variance of y is about 0.6: the model learned the curve
    assert reg.summary["final_accuracy"] is None  # no accuracy was measured, and none is made up
    frozen = torch.load(reg.model_path)["0.bias"]
    assert torch.equal(frozen, example("regression").build_model()[0].bias.detach()), "a frozen parameter moved"
    assert reg.summary["num_blocks"] >= 2 and "script" in json.loads((reg.run_dir / "meta.json").read_text())


@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists(), reason="no torchrun beside this Python")
@pytest.mark.parametrize(
    ("name", "mode", "metric"),
    [("own_loop", "auto", "accuracy"), ("regression", "ssp", "mse")],
)
def test_examples_run_under_torchrun(tmp_path: Path, name: str, mode: str, metric: str) -> None:
    """The same scripts, one process per server, worker and the evaluator: roles from ranks (one server and
    three workers, so that a launch costs five interpreters, not seven). Each example once: a mode's rules
    run the same code under either launcher (test_examples_train_in_every_mode covers every mode), and a
    launch costs ~12 s of interpreters starting, so the other five modes would add a minute and no path."""
    config = tmp_path / "run.yaml"
    RunKeys.generate(3).write(tmp_path / "keys")  # what `weaksync keys DIR --workers 3` writes
    config.write_text(
        f"sync: {{mode: {mode}}}\ncluster: {{workers: 3, servers: 1}}\ntrain: {{steps: 100}}\n"
        f"run: {{out_dir: {tmp_path / 'runs'}}}\nsecurity: {{keys: {tmp_path / 'keys'}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WEAKSYNC_CONFIG": str(config)}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "5", str(ROOT / "examples" / f"{name}.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["mode"] == mode and s["worker_status"] == {str(w): "done" for w in range(3)}
    assert s["metric"]["name"] == metric and s["metric"]["final"] is not None
    if metric == "accuracy":
        assert s["final_accuracy"] >= 0.7, s["final_accuracy"]
    else:
        assert s["metric"]["final"] < 0.3, s["metric"]
    assert (run_dir / FINAL_MODEL).exists()
