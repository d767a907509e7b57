"""Writing a file of the workspace so that a reader sees the old content or the new, never a
part: the text goes to a temporary sibling named by this process, which is then renamed over
the file (a rename within one folder is atomic on POSIX file systems)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Replace `path`'s content with `text` (UTF-8) in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Replace `path`'s content with `data` as JSON in one step."""
    write_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")
