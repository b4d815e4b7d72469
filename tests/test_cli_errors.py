"""Bad input ends with one line on stderr naming the field and the fix, exit code 2, and no run started.

The cases run the console entry in this process (an interpreter per case cost 2.5 s of torch imports); one
runs it as a real `python -m weaksync`, the way a user meets it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from weaksync.cli.main import main
from weaksync.config import ConfigError, load_config


def _out_dir(tmp_path: Path, args: list[str]) -> list[str]:
    return ["--out-dir", str(tmp_path / "runs")] if args[0] == "train" else []


def _cli_here(tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture, monkeypatch) -> tuple[int, str]:
    """`weaksync ARGS` through main(): its exit code and its stderr."""
    monkeypatch.setattr(sys, "argv", ["weaksync", *args, *_out_dir(tmp_path, args)])
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        for sig, handler in handlers.items():  # main() installs its own; pytest's come back
            signal.signal(sig, handler)
    return exit_info.value.code, capsys.readouterr().err


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
        (["train", "--mode", "async", "--set", "sync.sync_warmup=1"], "sync.sync_warmup"),
        (["summarize", "/tmp"], "is not a run directory"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], expected: str, capsys, monkeypatch) -> None:
    code, stderr = _cli_here(tmp_path, args, capsys, monkeypatch)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir()), "a run was started"


def test_the_console_entry_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    args = ["train", "--k", "9"]
    result = subprocess.run(
        [sys.executable, "-m", "weaksync", *args, *_out_dir(tmp_path, args)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("weaksync: error: ") and "sync.k=9 exceeds cluster.workers=4" in line


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


def test_existing_run_directory_is_not_overwritten(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "summary.json").write_text("{}")
    code, stderr = _cli_here(tmp_path, ["train", "--name", "taken", "--quiet"], capsys, monkeypatch)
    assert code == 2
    assert "run directory" in stderr and "already exists" in stderr
    assert (tmp_path / "runs" / "taken" / "summary.json").read_text() == "{}"
