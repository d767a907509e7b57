"""A folder's manifest: the size and sha256 of each of its files, written once the folder is
complete, so that a later reader can tell an intact folder from a damaged one (a file cut
short by a full disk, truncated or rewritten by hand, gone).

The manifest is written last but one, before the done marker (`chattune.workspace.markers`):
a folder marked done after this manifest existed always has one. Checking a folder costs a
`stat` per file, then one read of each file (sha256 runs at about 1-2 GB/s a core, files
are hashed in parallel): the sizes are compared first, so a cut-short file is found without
reading anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chattune.workspace.files import write_json_atomic
from chattune.workspace.markers import DONE

MANIFEST = "chattune-manifest.json"
_VERSION = 1


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sha256_all(paths: Iterable[Path]) -> list[str]:
    """The digests of several files, in order, hashed in parallel: hashlib releases the GIL,
    so a checkpoint's weight shards and optimizer state take one core each."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(_sha256, paths))


def _listed(folder: Path) -> list[Path]:
    """Every file under `folder` but the manifest and the done marker, in a stable order."""
    skip = {MANIFEST, DONE}
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name not in skip
    )


def write_manifest(folder: Path) -> dict[str, Any]:
    """Record the size and sha256 of every file under `folder` in `folder/MANIFEST`.

    Call it when the folder is complete, before `mark_done`. Hidden files (a temporary file
    of an atomic write) are left out.

    Returns:
        The manifest written: `{"version": 1, "files": [{"path", "size", "sha256"}, ...]}`,
        paths relative to `folder` with `/` separators.
    """
    paths = _listed(folder)
    files = [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": digest}
        for p, digest in zip(paths, _sha256_all(paths), strict=True)
    ]
    manifest = {"version": _VERSION, "files": files}
    write_json_atomic(folder / MANIFEST, manifest, indent=1)
    return manifest


def has_manifest(folder: Path) -> bool:
    """Whether `folder` holds a manifest (folders completed before manifests existed do not)."""
    return (folder / MANIFEST).is_file()


def manifest_problem(folder: Path, *, hashes: bool = True) -> str | None:
    """Why `folder` does not match its manifest, or None when every file listed is intact.

    Args:
        folder: a folder `write_manifest` wrote to.
        hashes: also compare sha256 digests (one read of every file); False compares sizes
            only (a `stat` per file).

    Returns:
        The first difference, naming the file: `model.safetensors is 100 bytes, manifest
        says 9,834,112`; files added after the manifest are not checked.
    """
    path = folder / MANIFEST
    if not path.is_file():
        return f"it has no {MANIFEST}"
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        listed = [(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in files]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its {MANIFEST} cannot be read ({exc})"
    for rel, size, _ in listed:
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing (manifest lists {size:,} bytes)"
        if (got := p.stat().st_size) != size:
            return f"{rel} is {got:,} bytes, manifest says {size:,}"
    if hashes:
        found = _sha256_all(folder / rel for rel, _, _ in listed)
        for (rel, _, digest), got in zip(listed, found, strict=True):
            if got != digest:
                return f"{rel} has changed since it was saved (its sha256 is not the manifest's)"
    return None
