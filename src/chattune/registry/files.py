"""Placing a registered model's files in the workspace: hard links, else copies, via staging.

A hard link shares the file's data with the source: registering a 500 MB model costs a
directory walk, not 500 MB of writes. Where the file system refuses (another device, no
link support) the file is copied. Either way the files are made read-only: a linked file
is one inode with two names, so a tool rewriting the source in place would otherwise change
the registered version too; now it fails loudly instead (the source's modes change with it,
and the registry says so).

Everything is written into a hidden staging folder beside the destination and renamed into
place at the end: a crash leaves the staging folder (removed by the next registration),
never a half-written version folder.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class Placed:
    """What `place_tree` did: file and byte counts, and how many files it linked."""

    files: int
    linked: int
    copied: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "files": self.files,
            "linked": self.linked,
            "copied": self.copied,
            "bytes": self.bytes,
        }


def staging_path(final: Path) -> Path:
    """The hidden folder `final` is built in (versions never start with '.')."""
    return final.with_name(f".{final.name}.staging")


def place_tree(src: Path, final: Path) -> Placed:
    """Give `final` the files of `src` (links followed), hard-linked where possible.

    Args:
        src: the folder to register; it is not modified except for its files' write bits.
        final: the version folder to create; it must not exist.

    Returns:
        The counts of files linked and copied.

    Raises:
        FileExistsError: `final` exists.
        OSError: a file could be neither linked nor copied (the staging folder is removed).
    """
    if final.exists():
        raise FileExistsError(final)
    stage = staging_path(final)
    shutil.rmtree(stage, ignore_errors=True)  # left by a registration that was killed
    stage.mkdir(parents=True)
    files = linked = size = 0
    can_link = True
    try:
        for dirpath, _dirs, names in os.walk(src, followlinks=True):
            rel = Path(dirpath).relative_to(src)
            (stage / rel).mkdir(exist_ok=True)
            for name in sorted(names):
                source, target = Path(dirpath) / name, stage / rel / name
                if can_link:
                    try:
                        os.link(source, target)  # follows a symlinked source to its file
                        linked += 1
                    except OSError:  # EXDEV, EPERM, EMLINK, ENOTSUP: copy from now on
                        can_link = False
                if not target.exists():
                    shutil.copy2(source, target)
                _read_only(target)
                files += 1
                size += target.stat().st_size
        os.rename(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Placed(files=files, linked=linked, copied=files - linked, bytes=size)


def _read_only(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & WRITE_BITS:
        path.chmod(mode & ~WRITE_BITS)


def remove_tree(folder: Path) -> None:
    """Delete a version folder: renamed aside first, so no half-deleted folder keeps the
    version's name if the removal is interrupted."""
    if not folder.exists():
        return
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(folder, doomed)
    shutil.rmtree(doomed)
