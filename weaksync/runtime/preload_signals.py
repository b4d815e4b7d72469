"""First module the forkserver preloads: it ignores SIGINT while torch imports.

A Ctrl-C in the first seconds of a run reaches the whole process group, the forkserver too; during its
preload it would print a traceback of torch's import (multiprocessing ignores SIGINT there only after the
preload). The launcher stops the forkserver itself, and each role sets its own SIGINT and SIGTERM handlers
(spec.py), so ignoring it here loses nothing.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
