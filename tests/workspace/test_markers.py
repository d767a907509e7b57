"""The one done marker of step folders and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from chattune.workspace.markers import DONE, is_done, mark_done


def test_a_folder_is_done_only_once_marked(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert not is_done(tmp_path)
    mark_done(tmp_path, {"step": 8})
    assert is_done(tmp_path)
    assert json.loads((tmp_path / DONE).read_text()) == {"step": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == [DONE, "weights.bin"]  # no temp left


def test_the_marker_of_older_versions_counts(tmp_path: Path) -> None:
    (tmp_path / "_SUCCESS").write_text("")  # what finetune and convert wrote before
    assert is_done(tmp_path)
