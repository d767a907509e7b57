"""A folder's manifest: sizes and hashes recorded when complete, compared when read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from chattune.workspace.manifest import (
    MANIFEST,
    has_manifest,
    manifest_problem,
    write_manifest,
)
from chattune.workspace.markers import DONE, mark_done


def _folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"w" * 9_834)
    (root / "sub" / "optimizer.pt").write_bytes(b"o" * 100)
    return root


def test_the_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt")
    (folder / ".model.safetensors.123.tmp").write_bytes(b"half")  # an atomic write under way
    manifest = write_manifest(folder)
    mark_done(folder)
    assert has_manifest(folder)
    assert json.loads((folder / MANIFEST).read_text()) == manifest
    assert manifest["files"] == [
        {
            "path": "model.safetensors",
            "size": 9_834,
            "sha256": hashlib.sha256(b"w" * 9_834).hexdigest(),
        },
        {
            "path": "sub/optimizer.pt",
            "size": 100,
            "sha256": hashlib.sha256(b"o" * 100).hexdigest(),
        },
    ]
    assert DONE not in {f["path"] for f in manifest["files"]}
    assert manifest_problem(folder) is None


def test_a_cut_short_file_is_found_by_its_size(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt")
    write_manifest(folder)
    with (folder / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    expected = "model.safetensors is 100 bytes, manifest says 9,834"
    assert manifest_problem(folder) == expected
    assert manifest_problem(folder, hashes=False) == expected


def test_a_changed_file_of_the_same_size_is_found_by_its_hash(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt")
    write_manifest(folder)
    (folder / "sub" / "optimizer.pt").write_bytes(b"x" * 100)
    assert manifest_problem(folder, hashes=False) is None  # sizes only: a stat per file
    problem = manifest_problem(folder)
    assert problem is not None and problem.startswith("sub/optimizer.pt has changed")


def test_a_missing_file_or_manifest_is_named(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt")
    assert manifest_problem(folder) == f"it has no {MANIFEST}"
    write_manifest(folder)
    (folder / "sub" / "optimizer.pt").unlink()
    assert manifest_problem(folder) == "sub/optimizer.pt is missing (manifest lists 100 bytes)"
    (folder / MANIFEST).write_text("{not json")
    problem = manifest_problem(folder)
    assert problem is not None and problem.startswith(f"its {MANIFEST} cannot be read")


def test_files_added_after_the_manifest_are_not_checked(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt")
    write_manifest(folder)
    (folder / "notes.txt").write_text("added by hand")
    assert manifest_problem(folder) is None
