"""The forkserver every embedded run's processes come from: what it preloads, and when it starts.

Its preload imports torch once for all roles. Started by the first run, it would begin only after the
launcher imported torch itself, and the two imports would run one after the other. A command that is
going to launch a run (`weaksync train`, `run`, `bench`) starts it first instead (`start_early`), so both
import side by side. Light on purpose: importing this module imports nothing heavy.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

PRELOAD = [
    "weaksync.runtime.preload_signals",  # first: a Ctrl-C during the preload is the launcher's to handle
    "torch",
    "torch._dynamo",  # torch.optim imports it on first use: pay it once here, not in every server
    "sklearn.datasets",
    "weaksync.runtime.server",
    "weaksync.runtime.worker",
    "weaksync.runtime.evaluator",
    "weaksync.training.models",
    "weaksync.training.data",
]


def forkserver_context(extra: tuple[str, ...] = ()) -> BaseContext:
    """The forkserver context with weaksync's preload (plus `extra` modules, if it is not running yet)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, *extra])
    return ctx


def start_early() -> None:
    """Start the forkserver now, before this process imports torch. It ignores SIGINT while it preloads
    (preload_signals), and would otherwise outlive an interrupted start-up by the rest of its import (its
    parent's exit ends it only once it listens), so it is stopped at exit too."""
    forkserver_context()
    forkserver.ensure_running()
    atexit.register(stop)


def stop() -> None:
    """End the forkserver now (runs are over or never started: no child of it is left to start)."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # noqa: SLF001  multiprocessing keeps it here
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
