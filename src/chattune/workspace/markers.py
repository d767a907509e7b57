"""The one "done" marker: a folder is complete when it holds `_SUCCESS`.

Every pipeline step's cache folder and every finetune checkpoint follow it: write the
files first, the marker last (`mark_done`); trust a folder only when `is_done` says so.
The marker is written under a temporary name and renamed, so it is never half there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chattune.workspace.files import write_atomic

DONE = "_SUCCESS"


def mark_done(folder: Path, info: dict[str, Any] | None = None) -> None:
    """Mark `folder` complete; `info` (JSON) says what completed it, e.g. a step number."""
    write_atomic(folder / DONE, json.dumps(info or {}))


def is_done(folder: Path) -> bool:
    """Whether `folder` was marked complete."""
    return (folder / DONE).is_file()
