"""Real CPU throttling through the cgroup v1 cpu controller (skips where the machine does not allow it)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import psutil
import pytest

from weaksync.stragglers.cgroup import CPU_ROOT, CpuThrottle, available, parse_throttle

REASON = available()


def _cpu_seconds_over(proc: psutil.Process, seconds: float) -> float:
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return sum(proc.cpu_times()[:2]) - before


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_quota_caps_a_busy_process_and_is_removed_afterwards() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(busy.pid)
        run_id = f"test-{uuid.uuid4().hex[:6]}"
        with CpuThrottle(run_id) as throttle:
            group = throttle.set("worker-0", busy.pid, 0.25)
            assert str(busy.pid) in (group / "cgroup.procs").read_text().split()
            capped = _cpu_seconds_over(proc, 1.0)
            throttle.set("worker-0", busy.pid, 1.0)  # changed while it runs: the cap is lifted
            lifted = _cpu_seconds_over(proc, 1.0)
        assert 0.15 <= capped <= 0.35, capped
        assert lifted >= 2 * capped, (capped, lifted)
        assert not (CPU_ROOT / "weaksync" / run_id).exists(), "the run's cgroups were left behind"
        assert str(busy.pid) in (CPU_ROOT / "cgroup.procs").read_text().split()
    finally:
        busy.kill()
        busy.wait()


def test_parse_throttle() -> None:
    assert parse_throttle("worker-1=0.25") == ("worker-1", 0.25)
    assert parse_throttle("server-0=1") == ("server-0", 1.0)
    for bad in ("worker-1", "w1=0.5", "worker-1=0", "worker-1=x", "=0.5"):
        with pytest.raises(ValueError, match="write it as worker-ID=FRACTION"):
            parse_throttle(bad)
