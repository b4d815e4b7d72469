"""One base class for every error weaksync raises on purpose, so a caller can catch them all at once.

Each subclass also derives from the builtin it refines (ValueError for bad input, RuntimeError for a run
that cannot go on), so code written against those keeps working. The message is one line: the problem
and the fix.
"""

from __future__ import annotations


class WeaksyncError(Exception):
    """A problem weaksync detected and can state in one line (bad input, a refused peer, a failed run)."""
