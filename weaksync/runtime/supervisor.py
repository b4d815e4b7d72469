"""One supervisor for every process weaksync starts: the embedded cluster's roles, the DDP baseline's ranks and
the namespace testbed's torchrun launches.

A child is either a Python function in a `multiprocessing` process (started from a forkserver that has
torch loaded already) or a command in its own session (`subprocess.Popen`, stopped as a process group, so a
torchrun agent's ranks go with it). Either way the supervisor knows it by name, reports its exit code
(negative: the signal that ended it), and `stop()` ends every child still running the same way: SIGTERM,
a grace period, then SIGKILL, returning the names it had to kill. Used as a context manager it stops them
on any exit, an exception or Ctrl-C included, so no process outlives the run.

torch.distributed.elastic has a process context of its own (`start_processes`); it does not fit here: its
`wait()` ends the whole group at the first failed process, while a weak-synchronization run goes on
without a failed worker (`on_worker_failure: continue`) and the launcher decides what a failure means.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


class _Child:
    """A started process, whichever way it was started."""

    def __init__(self, process: BaseProcess | subprocess.Popen):
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid  # type: ignore[return-value]

    @property
    def exitcode(self) -> int | None:
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll()
        return self.process.exitcode

    def signal(self, sig: int) -> None:
        """To the process, or to its whole group for a command in its own session (also after its leader
        exited, so the group's leftovers are reached)."""
        try:
            if isinstance(self.process, subprocess.Popen):
                os.killpg(self.process.pid, sig)
            elif self.process.exitcode is None:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> None:
        if isinstance(self.process, subprocess.Popen):
            try:
                self.process.wait(max(0.0, timeout))
            except subprocess.TimeoutExpired:
                pass
        else:
            self.process.join(max(0.0, timeout))


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Defer SIGINT and SIGTERM from starting a child until it is recorded: a Ctrl-C in that gap (a forkserver
    start waits seconds for torch to import) would otherwise leave a child that `stop` does not know of.
    Python runs signal handlers in the main thread, so the recorded signal is raised again there, to the
    handler that was in force, once the child is in the table. Elsewhere than the main thread: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    before = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


class Supervisor:
    """The named children of one run; see the module docstring."""

    def __init__(self, grace: float):
        self.grace = grace
        self._children: dict[str, _Child] = {}

    def __len__(self) -> int:
        return len(self._children)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self, name: str, ctx: BaseContext, target: Callable[..., Any], args: tuple = ()) -> BaseProcess:
        """Run `target(*args)` in a new process of `ctx` (a forkserver context: cheap starts, no inherited
        sockets or threads)."""
        self._check_new(name)
        proc = ctx.Process(target=target, args=args, name=f"weaksync-{name}", daemon=False)  # type: ignore[attr-defined]
        with _interrupts_deferred():
            proc.start()
            self._children[name] = _Child(proc)
        return proc

    def respawn(self, name: str, ctx: BaseContext, target: Callable[..., Any], args: tuple = ()) -> BaseProcess:
        """Start a new process under the name of one that has ended (a restart); its exit code is forgotten."""
        if name not in self._children or self._children[name].exitcode is None:
            raise ValueError(f"'{name}' is not a child that has ended")
        del self._children[name]
        return self.spawn(name, ctx, target, args)

    def popen(self, name: str | None, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Run a command in its own session; `name` None numbers it."""
        name = name if name is not None else f"process-{len(self._children)}"
        self._check_new(name)
        with _interrupts_deferred():
            proc = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
            self._children[name] = _Child(proc)
        return proc

    def _check_new(self, name: str) -> None:
        if name in self._children:
            raise ValueError(f"a process named '{name}' was started already")

    def names(self) -> list[str]:
        return list(self._children)

    def pid(self, name: str) -> int:
        return self._children[name].pid

    def exitcode(self, name: str) -> int | None:
        return self._children[name].exitcode

    def exited(self) -> dict[str, int]:
        """The children that have ended, with their exit codes."""
        codes = {name: child.exitcode for name, child in self._children.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def running(self) -> list[str]:
        return [name for name, child in self._children.items() if child.exitcode is None]

    def wait(self, timeout: float) -> bool:
        """Let the children end on their own, for up to `timeout` seconds; True if all did."""
        deadline = time.monotonic() + timeout
        for child in self._children.values():
            child.wait(deadline - time.monotonic())
        return not self.running()

    def stop(self, grace: float | None = None) -> list[str]:
        """SIGTERM every child still running, wait up to the grace, SIGKILL the rest; returns the names killed.
        Idempotent: children that ended are left alone (a session's group is still swept)."""
        grace = self.grace if grace is None else grace
        alive = {name: child for name, child in self._children.items() if child.exitcode is None}
        for child in alive.values():
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in alive.values():
            child.wait(deadline - time.monotonic())
        killed = []
        for name, child in alive.items():
            if child.exitcode is None:
                killed.append(name)
            child.signal(signal.SIGKILL)  # for a session: whatever of its group is left
        for name in killed:
            self._children[name].wait(5.0)
        return killed
