"""A user's script gets its role from `weaksync run`'s environment or torchrun's ranks; bad input is one
line naming the fix, before any process starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import weaksync
from weaksync.config import ConfigError
from weaksync.runtime.launcher import check_script
from weaksync.runtime.roles import ENV_RANK, ENV_ROLE, spec_from_environment


@pytest.fixture()
def no_role(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (ENV_ROLE, ENV_RANK, "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_connect_outside_a_run_says_how_to_start_the_script(no_role: None) -> None:
    with pytest.raises(ConfigError, match="weaksync run SCRIPT"):
        weaksync.connect(nn.Linear(2, 2))
    assert weaksync.role() is None


def test_a_torchrun_world_that_does_not_fit_the_cluster_is_refused(no_role: None, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "6")  # 2 servers + 4 workers, but a script also needs the evaluator
    with pytest.raises(ConfigError, match=r"cluster.servers \+ cluster.workers \+ 1 \(the evaluator\) = 7"):
        spec_from_environment(None, None)


def test_an_unknown_role_is_refused(no_role: None, monkeypatch) -> None:
    monkeypatch.setenv(ENV_ROLE, "coordinator")
    with pytest.raises(ConfigError, match="must be one of server, worker, evaluator"):
        spec_from_environment(None, None)


def test_a_missing_or_non_python_script_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_script(str(tmp_path / "train.py"))
    (tmp_path / "train.sh").write_text("echo hi\n")
    with pytest.raises(ConfigError, match="not a .py file"):
        check_script(str(tmp_path / "train.sh"))


def test_every_deliberate_error_shares_one_base_class() -> None:
    from weaksync.runtime.launcher import RunFailed
    from weaksync.runtime.spec import RoleError
    from weaksync.training.data import DataError
    from weaksync.transport.messages import BadMessage

    for error in (ConfigError, DataError, RoleError, RunFailed, BadMessage):
        assert issubclass(error, weaksync.WeaksyncError), error
    assert issubclass(ConfigError, ValueError) and issubclass(RunFailed, RuntimeError)  # builtins kept
