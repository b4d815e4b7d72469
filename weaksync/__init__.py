"""weaksync: a parameter server for PyTorch with partial push and partial pull."""

from .api import connect, role, run, train
from .config import Config, ConfigError, load_config
from .errors import WeaksyncError
from .runtime.launcher import RunFailed, RunResult
from .runtime.worker import WorkerSession
from .training.workload import Workload

__version__ = "0.1.0"
__all__ = [
    "Config",
    "ConfigError",
    "RunFailed",
    "RunResult",
    "WeaksyncError",
    "WorkerSession",
    "Workload",
    "connect",
    "load_config",
    "role",
    "run",
    "train",
]
