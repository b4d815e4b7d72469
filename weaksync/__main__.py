"""`python -m weaksync` and the `weaksync` console entry: a Ctrl-C while the heavy modules (torch) import
ends with the same one line as one during the run, instead of a traceback."""

from __future__ import annotations

import os
import signal
import sys
import time


def main() -> None:
    # a background job (or a CI runner) may hand us SIGINT ignored; the CLI restores it after the imports
    # (cli.main.stop_on_interrupt), but a Ctrl-C during them would be lost and the run would start anyway
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # SIGINT waits until the imports are done: raised inside torch's C++ initialisation it can end in
        # std::terminate (SIGABRT, "pybind11::error_already_set") instead of a KeyboardInterrupt
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            from .cli.main import main as cli_main
            from .runtime import launcher  # noqa: F401  what main() imports first, loaded here under the guard
            from .training import data  # noqa: F401
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        time.sleep(0)  # a Ctrl-C held back during the imports is raised here, inside this guard
    except KeyboardInterrupt:
        # os._exit: an interrupt inside an extension's own Python code leaves CPython's "unhandled
        # KeyboardInterrupt" flag set, and a normal exit would then re-raise SIGINT on itself (-2, not 130).
        # Nothing has been started yet, so there is nothing to clean up.
        print("weaksync: interrupted", file=sys.stderr, flush=True)
        os._exit(130)
    cli_main()


if __name__ == "__main__":
    main()
