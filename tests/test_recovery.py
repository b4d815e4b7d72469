"""What a run's restarts cost, from its logs (report/recovery.py), and the logs a killed process leaves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from weaksync.config import ConfigError, load_config
from weaksync.records.eventlog import EventLog, read_events
from weaksync.report.recovery import recovery_section


def test_a_server_restart_counts_the_versions_its_checkpoint_took_back_and_when_it_was_back() -> None:
    launcher = [
        {"ev": "restart", "name": "server-0", "why": "killed by SIGKILL", "t": 110.0},
        {"ev": "restart", "name": "worker-1", "why": "killed by SIGKILL", "t": 120.0},
    ]
    logs = {
        "server-0": [
            {"ev": "start", "blocks": [0, 2], "t": 100.0},
            {"ev": "update", "j": 0, "v": 30, "t": 108.0},  # the killed process's last logged lines ...
            {"ev": "start", "blocks": [0, 2], "t": 110.5},
            {"ev": "restored", "versions": {"0": 25, "2": 24}, "t": 110.6},
            {"ev": "update", "j": 0, "v": 26, "t": 111.5},
        ],
        "worker-0": [{"ev": "step", "versions": [33, 0, 31, 0], "t": 109.0}],  # ... and what workers installed
        "worker-1": [{"ev": "step", "versions": [0, 0, 0, 0], "t": 100.0}, {"ev": "step", "versions": [], "t": 123.0}],
    }
    got = recovery_section(launcher, logs, start=100.0)
    assert got["events"] == [
        {"name": "server-0", "t": 10.0, "why": "killed by SIGKILL", "back_after": 1.5, "versions_lost": 8 + 7},
        {"name": "worker-1", "t": 20.0, "why": "killed by SIGKILL", "back_after": 3.0, "versions_lost": None},
    ]
    assert (got["restarts"], got["servers"], got["workers"], got["versions_lost"]) == (2, 1, 1, 15)
    assert got["back_after_max"] == 3.0


def test_a_restart_the_run_ended_before_has_no_recovery_time_and_no_restarts_is_empty() -> None:
    launcher = [{"ev": "restart", "name": "worker-0", "why": "exit code 1", "t": 5.0}]
    assert recovery_section(launcher, {}, None)["events"][0]["back_after"] is None
    assert recovery_section([], {}, None) == {
        "restarts": 0, "servers": 0, "workers": 0, "back_after_p50": None, "back_after_p95": None,
        "back_after_max": None, "versions_lost": 0, "events": [],
    }  # fmt: skip


def test_a_restarted_process_appends_on_a_new_line_after_a_torn_record(tmp_path: Path) -> None:
    path = tmp_path / "server-0.jsonl"
    path.write_text(json.dumps({"ev": "update", "t": 1}) + '\n{"ev":"upd')  # SIGKILL mid-write
    log = EventLog(path)
    log.write("start", t=2)
    log.close()
    assert [e["ev"] for e in read_events(path)] == ["update", "start"]


def test_server_restarts_need_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("checkpoint:\n  interval: null\n")
    with pytest.raises(ConfigError, match="on_server_failure=restart needs checkpoint.interval"):
        load_config(path)
    assert load_config(path, {"on_server_failure": "stop"}).checkpoint.interval is None


def test_an_update_record_of_several_blocks_reads_as_one_per_block() -> None:
    """A server logs the blocks a message updated alike in one record; readers see one per block, and the
    records of older runs (one block each) pass as they are."""
    from weaksync.records.eventlog import per_block

    grouped = {"ev": "update", "s": 0, "j": [0, 2, 4], "v": 7, "t": 1.0}
    single = {"ev": "update", "s": 0, "j": 6, "v": 7, "t": 1.0}
    dropped = {"ev": "drop", "s": 0, "w": 1, "j": [0, 2], "reason": "stale"}
    out = list(per_block([grouped, {"ev": "start"}, single, dropped]))
    assert [(e["ev"], e.get("j")) for e in out] == [
        ("update", 0),
        ("update", 2),
        ("update", 4),
        ("start", None),
        ("update", 6),
        ("drop", 0),
        ("drop", 2),
    ]
    assert all(e["v"] == 7 for e in out if e["ev"] == "update")
