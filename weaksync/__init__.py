"""weaksync: a parameter server for PyTorch with partial push and partial pull.

The public names load on first use (PEP 562), so `import weaksync` and the console entry do not import
torch before they can handle a Ctrl-C: an interrupt during start-up then ends with one line, not a traceback.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import connect, role, run, train
    from .config import Config, ConfigError, load_config
    from .errors import WeaksyncError
    from .runtime.launcher import RunFailed, RunResult
    from .runtime.worker import WorkerSession
    from .training.workload import Workload

__version__ = "0.1.0"
_WHERE = {
    "Config": ".config",
    "ConfigError": ".config",
    "load_config": ".config",
    "RunFailed": ".runtime.launcher",
    "RunResult": ".runtime.launcher",
    "WeaksyncError": ".errors",
    "WorkerSession": ".runtime.worker",
    "Workload": ".training.workload",
    "connect": ".api",
    "role": ".api",
    "run": ".api",
    "train": ".api",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'weaksync' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
