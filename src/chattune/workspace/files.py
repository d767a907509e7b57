"""Writing a file of the workspace so that a reader sees the old content or the new, never a
part: the text goes to a temporary sibling named by this process, which is then renamed over
the file (a rename within one folder is atomic on POSIX file systems)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Replace `path`'s content with `text` (UTF-8) in one step.

    `mode` (e.g. 0o600 for a secret): the file has it from its first byte on, never the
    umask's default for a moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if mode is None:
            tmp.write_text(text, encoding="utf-8")
        else:
            tmp.unlink(missing_ok=True)  # a crashed run's leftover would keep its own mode
            with os.fdopen(
                os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8"
            ) as f:
                f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Replace `path`'s content with `data` as JSON in one step."""
    write_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")
