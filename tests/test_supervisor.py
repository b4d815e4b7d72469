"""The one process supervisor: exit codes by name, and stop() ends everything it started, a process that
ignores SIGTERM and a command's whole process group included."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time

import pytest

from weaksync.runtime.supervisor import Supervisor

FORK = mp.get_context("fork")  # cheap here; the launcher uses a forkserver


def _exit_with(code: int) -> None:
    os._exit(code)


def _ignore_sigterm_and_sleep() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead for our purposes
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_exit_codes_by_name_and_a_stubborn_child_is_killed() -> None:
    sup = Supervisor(grace=0.3)
    sup.spawn("ok", FORK, _exit_with, (0,))
    sup.spawn("bad", FORK, _exit_with, (3,))
    stubborn = sup.spawn("stubborn", FORK, _ignore_sigterm_and_sleep)
    deadline = time.monotonic() + 10
    while len(sup.exited()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sup.exited() == {"ok": 0, "bad": 3} and sup.running() == ["stubborn"] and len(sup) == 3
    assert not sup.wait(0.1)
    assert sup.stop() == ["stubborn"]  # SIGTERM was ignored: SIGKILL after the grace
    assert sup.exitcode("stubborn") == -signal.SIGKILL and not stubborn.is_alive()
    assert sup.stop() == []  # idempotent


def test_a_command_is_stopped_with_its_whole_group(tmp_path) -> None:
    pidfile = tmp_path / "grandchild"
    script = f"sleep 60 & echo $! > {pidfile}; wait"  # a child that forks, as a torchrun agent does
    with Supervisor(grace=2.0) as sup:
        sup.popen(None, ["sh", "-c", script])
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.02)
        grandchild = int(pidfile.read_text())
        assert _alive(grandchild) and sup.names() == ["process-0"]
    assert sup.running() == [] and not _alive(grandchild)


def test_leaving_the_block_on_an_exception_stops_every_child() -> None:
    with pytest.raises(RuntimeError), Supervisor(grace=1.0) as sup:
        proc = sup.spawn("sleeper", FORK, time.sleep, (60,))
        sup.popen("command", [sys.executable, "-c", "import time; time.sleep(60)"])
        raise RuntimeError("the run failed")
    assert not proc.is_alive() and sup.running() == []
    with pytest.raises(ValueError, match="started already"):
        sup.spawn("sleeper", FORK, time.sleep, (0,))


def test_respawn_replaces_an_ended_child_only() -> None:
    sup = Supervisor(grace=0.3)
    first = sup.spawn("role", FORK, _exit_with, (9,))
    first.join(10)
    assert sup.exited() == {"role": 9}
    second = sup.respawn("role", FORK, _ignore_sigterm_and_sleep)
    assert second.pid != first.pid and sup.running() == ["role"] and len(sup) == 1
    with pytest.raises(ValueError, match="not a child that has ended"):
        sup.respawn("role", FORK, _exit_with, (0,))
    assert sup.stop() == ["role"]
