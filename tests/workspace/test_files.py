"""The one atomic write: a reader sees the old file or the whole new one, and no temporary
file is left behind, even when the write fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chattune.workspace.files import write_atomic, write_json_atomic


def test_replaces_the_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text("old")
    write_json_atomic(path, {"pid": 1, "name": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"pid": 1, "name": "é"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "\ud800")  # a lone surrogate cannot be written as UTF-8
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
