"""Bad input ends with one line on stderr naming the field and the fix, exit code 2, and no run started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from weaksync.config import ConfigError, load_config


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    out_dir = ["--out-dir", str(tmp_path / "runs")] if args[0] == "train" else []
    return subprocess.run(
        [sys.executable, "-m", "weaksync.cli.main", *args, *out_dir], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--k", "9"], "sync.k=9 exceeds cluster.workers=4"),
        (["train", "--b", "9"], "b=9 must be between 1 and 4"),
        (["train", "--blocks", "1"], "cluster.blocks=1 is below cluster.servers=2"),
        (["train", "--model", "vgg"], "model.name: unknown model 'vgg'"),
        (
            ["train", "--data", "cifar10", "--data-dir", "/no/such/dir"],
            "cifar10: data directory '/no/such/dir' does not exist",
        ),
        (["train", "--data", "mnist"], "data.name: unknown dataset 'mnist'"),
        (["train", "--mode", "fast"], "sync.mode: Input should be"),
        (["train", "--k", "1.5"], "sync.k"),
        (["train", "--k", "three"], "--k: 'three' is neither a count"),
        (["train", "--set", "optim.nesterov=true", "--set", "optim.momentum=0"], "nesterov needs"),
        (["train", "--set", "sync.bogus=1"], "sync.bogus: unknown field: use one of mode, k, b"),
        (["train", "--set", "noequals"], "--set 'noequals': write it as section.field=value"),
        (["train", "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
        (["train", "--set", "timeouts.heartbeat=1"], "heartbeat must exceed"),
        (["train", "--mode", "ssp", "--k", "2"], "sync.k=2: ssp applies every gradient on arrival"),
        (["train", "--mode", "partial-pull", "--tau", "0", "--blocks", "4"], "can deadlock"),
        (["summarize", "/tmp"], "is not a run directory"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], expected: str) -> None:
    result = _cli(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "a run was started"


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sync:\n  mode: bsp\n   k: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' line \d+ is not valid YAML"):
        load_config(path)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_yaml_and_flags_combine(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("sync: {mode: backup, backups: 2}\ncluster: {workers: 6}\n")
    cfg = load_config(path, {"optim.lr": 0.2})
    policy = cfg.policy(8)
    assert (policy.k, policy.b, policy.tau, cfg.optim.lr) == (4, 8, 0, 0.2)


def test_fractions_resolve_against_totals() -> None:
    cfg = load_config(None, {"sync.mode": "partial", "sync.k": 0.75, "sync.b": 0.25})
    policy = cfg.policy(8)
    assert (policy.k, policy.b) == (3, 2)


def test_existing_run_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "summary.json").write_text("{}")
    result = _cli(tmp_path, "train", "--name", "taken", "--quiet")
    assert result.returncode == 2
    assert "run directory" in result.stderr and "already exists" in result.stderr
