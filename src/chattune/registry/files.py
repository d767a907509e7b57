"""Placing a registered model's files in the workspace: linked or copied, via staging.

Files chattune owns already (a job's outputs in the step cache, another version's files)
are hard-linked: registering a 500 MB job output costs a directory walk, not 500 MB of
writes. Any other file, such as those of a folder a user registers, is copied (cloned
where the file system shares blocks copy-on-write: btrfs, XFS), never linked: a link is
one inode with two names, so making it read-only would change the user's folder, and
editing the source would change the registered version. Where linking is refused (another
device, no link support) the owned files are copied too. The placed files are made
read-only: a registered version is immutable.

Everything is written into a hidden staging folder beside the destination and renamed into
place at the end: a crash leaves the staging folder (removed by the next registration),
never a half-written version folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
# ioctl(dest, FICLONE, src): dest shares src's blocks (linux/fs.h; fcntl names it from 3.12)
FICLONE = getattr(fcntl, "FICLONE", 0x40049409)


@dataclass(frozen=True)
class Placed:
    """What `place_tree` did: file and byte counts, and how many files it linked, cloned
    (copies sharing the source's blocks) and copied byte by byte."""

    files: int
    linked: int
    cloned: int
    copied: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "files": self.files,
            "linked": self.linked,
            "cloned": self.cloned,
            "copied": self.copied,
            "bytes": self.bytes,
        }


def staging_path(final: Path) -> Path:
    """The hidden folder `final` is built in (versions never start with '.')."""
    return final.with_name(f".{final.name}.staging")


def place_tree(src: Path, final: Path, owned: Sequence[Path] = ()) -> Placed:
    """Give `final` the files of `src` (links followed): hard links to the files inside
    `owned`, copies of all others.

    Args:
        src: the folder to register. Files outside `owned` are only read.
        final: the version folder to create; it must not exist.
        owned: folders whose files chattune wrote and may link and make read-only.

    Returns:
        The counts of files linked, cloned and copied.

    Raises:
        FileExistsError: `final` exists.
        OSError: a file could be neither linked nor copied (the staging folder is removed).
    """
    if final.exists():
        raise FileExistsError(final)
    stage = staging_path(final)
    shutil.rmtree(stage, ignore_errors=True)  # left by a registration that was killed
    stage.mkdir(parents=True)
    owned_real = [Path(os.path.realpath(o)) for o in owned]
    files = linked = cloned = size = 0
    can_link = True
    try:
        for dirpath, _dirs, names in os.walk(src, followlinks=True):
            rel = Path(dirpath).relative_to(src)
            (stage / rel).mkdir(exist_ok=True)
            for name in sorted(names):
                source, target = Path(dirpath) / name, stage / rel / name
                real = Path(os.path.realpath(source))  # a symlinked file: where it really is
                if can_link and any(real.is_relative_to(o) for o in owned_real):
                    try:
                        os.link(real, target)
                        linked += 1
                    except OSError:  # EXDEV, EPERM, EMLINK, ENOTSUP: copy from now on
                        can_link = False
                if not target.exists():
                    cloned += _copy(real, target)
                _read_only(target)
                files += 1
                size += target.stat().st_size
        os.rename(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Placed(
        files=files, linked=linked, cloned=cloned, copied=files - linked - cloned, bytes=size
    )


def _copy(source: Path, target: Path) -> bool:
    """Copy one file with its mode and times; True if it was cloned (shares the source's
    blocks until either is written), False if its bytes were copied."""
    if _clone(source, target):
        shutil.copystat(source, target)
        return True
    shutil.copy2(source, target)
    return False


def _clone(source: Path, target: Path) -> bool:
    """Make `target` a copy-on-write clone of `source`; False where the file system cannot
    (ext4, tmpfs, another device), leaving `target` empty or absent."""
    try:
        with source.open("rb") as s, target.open("wb") as t:
            fcntl.ioctl(t.fileno(), FICLONE, s.fileno())
    except OSError:
        return False
    return True


def _read_only(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & WRITE_BITS:
        path.chmod(mode & ~WRITE_BITS)


def remove_tree(folder: Path) -> None:
    """Delete a version folder: renamed aside first, so no half-deleted folder keeps the
    version's name if the removal is interrupted. A symbolic link is removed, not followed."""
    if folder.is_symlink():
        folder.unlink()
        return
    if not folder.exists():
        return
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(folder, doomed)
    shutil.rmtree(doomed)
