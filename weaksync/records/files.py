"""Files a run leaves behind, written so that a reader (the launcher, `report`, a crash) never sees half of one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` into a temporary file beside `path`, then rename it over `path`: a reader, or a crash
    in the middle, sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    write(tmp)
    tmp.replace(path)


def write_json(path: Path, doc: Any) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1, default=str)))
