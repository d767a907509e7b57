"""Who may read the workspace: its owner only.

The workspace holds endpoint keys (`secrets/`), the metadata database and every model and
job, so the folder is 0700 and the database (with its `-wal` and `-shm` files, which SQLite
creates with the database's mode) and the secret files 0600. A workspace made by an older
chattune (0755 folder, 0644 database) is tightened when it is opened, with one message.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SECRETS_DIR = "secrets"  # the owner-only folder of key files, under the workspace root
_DB_SUFFIXES = ("", "-wal", "-shm")


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (an existing file is kept)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE))


def private_paths(root: Path, db_name: str) -> list[tuple[Path, int]]:
    """The paths of workspace `root` that only its owner may read, with the mode each gets."""
    paths = [(root, PRIVATE_DIR), (root / SECRETS_DIR, PRIVATE_DIR)]
    paths += [(root / f"{db_name}{suffix}", PRIVATE_FILE) for suffix in _DB_SUFFIXES]
    secrets = root / SECRETS_DIR
    if secrets.is_dir():
        paths += [(p, PRIVATE_FILE) for p in sorted(secrets.iterdir()) if p.is_file()]
    return paths


def tighten(root: Path, db_name: str) -> list[str]:
    """Take group and other permissions off the workspace's private paths.

    Returns:
        One `path 0755 -> 0700` entry per path changed (empty when all were private), and
        prints them as one message on stderr, since other users could read what they hold.
    """
    changed: list[str] = []
    refused: list[str] = []
    for path, mode in private_paths(root, db_name):
        try:
            old = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue  # a -wal or -shm exists only while a connection is open
        if old & 0o077 == 0:
            continue
        try:
            path.chmod(old & mode)
        except PermissionError:  # owned by another user: say so, never fail the command
            refused.append(str(path))
            continue
        changed.append(f"{path} {old:04o} -> {old & mode:04o}")
    if changed:
        print(
            "chattune: other users could read this workspace (endpoint keys, the database); "
            f"made it private to you: {'; '.join(changed)}",
            file=sys.stderr,
        )
    if refused:
        print(
            f"chattune: other users can read {', '.join(refused)} and chattune may not change "
            "that (another user owns it): ask the owner to run `chmod -R go= <workspace>`",
            file=sys.stderr,
        )
    return changed
