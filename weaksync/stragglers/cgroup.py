"""Real CPU slowdowns: throttle a process with the cgroup v1 `cpu` controller (CFS quota / period).

The kernel, not a sleep, makes the process slow: it gets at most `fraction` of one CPU per period. Groups
live under <root>/weaksync/<run id>/<process name>/ and are removed again when the run ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import WeaksyncError

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000  # short periods spread the cap over every step, not one long stall per 100 ms


class ThrottleError(WeaksyncError, RuntimeError):
    """The machine does not allow CPU throttling; the message says why and what to do."""


def available(root: Path = CPU_ROOT) -> str | None:
    """None when throttling works here, else the reason it does not."""
    if not (root / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {root}: CPU throttling needs it (mounted, as on most Linux hosts)"
    if not os.access(root, os.W_OK):
        return f"{root} is not writable: CPU throttling needs root"
    return None


class CpuThrottle:
    """The cgroups of one run; `set(name, pid, fraction)` may be called again to change a quota live."""

    def __init__(self, run_id: str, root: Path = CPU_ROOT):
        reason = available(root)
        if reason:
            raise ThrottleError(reason)
        self.root = root
        self.base = root / "weaksync" / run_id
        self.groups: dict[str, Path] = {}

    def set(self, name: str, pid: int, fraction: float) -> Path:
        """Limit process `pid` (all its threads) to `fraction` of one CPU; 1.0 or more lifts the limit."""
        if not fraction > 0:
            raise ValueError(f"CPU fraction {fraction} for {name} must be > 0 (e.g. 0.25 for a quarter of a CPU)")
        group = self.groups.get(name)
        if group is None:
            group = self.base / name
            group.mkdir(parents=True, exist_ok=True)
            self.groups[name] = group
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        quota = -1 if fraction >= 1 else max(1000, int(PERIOD_US * fraction))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
        return group

    def close(self) -> None:
        """Move remaining tasks back to the root group and remove every group this run made."""
        groups = [p for p in self.base.iterdir() if p.is_dir()] if self.base.is_dir() else []
        for group in groups:  # also those a `weaksync throttle` command added during the run
            _release(group, self.root)
        for path in (self.base, self.base.parent):
            try:
                path.rmdir()
            except OSError:
                pass  # another run's groups still live under weaksync/
        self.groups.clear()

    def __enter__(self) -> CpuThrottle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release(group: Path, root: Path) -> None:
    for _ in range(50):
        try:
            pids = (group / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return
        for pid in pids:
            try:
                (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # exited meanwhile
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.02)


def parse_throttle(spec: str) -> tuple[str, float]:
    """'worker-1=0.25' -> ('worker-1', 0.25), with a one-line error for anything else."""
    name, sep, value = spec.partition("=")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not sep or not name or fraction <= 0 or not (name.startswith("worker-") or name.startswith("server-")):
        raise ValueError(f"throttle '{spec}': write it as worker-ID=FRACTION or server-ID=FRACTION, e.g. worker-1=0.25")
    return name, fraction
