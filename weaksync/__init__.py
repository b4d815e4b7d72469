"""weaksync: a parameter server for PyTorch with partial push and partial pull."""

from .api import train
from .config import Config, ConfigError, load_config
from .runtime.launcher import RunFailed, RunResult
from .training.workload import Workload

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "RunFailed", "RunResult", "Workload", "load_config", "train"]
