"""Only the workspace's owner may read it: the folder is 0700, the database (with its -wal and
-shm) and the secret files 0600; an older workspace is tightened when opened, with one
message."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from chattune.workspace import Workspace
from chattune.workspace.files import write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files are 0644 and folders 0755 unless made private."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def private_files(root: Path) -> list[Path]:
    return [root / "chattune.db", root / "chattune.db-wal", root / "chattune.db-shm"]


def test_a_new_workspace_is_private(tmp_path: Path, umask_022, capsys) -> None:
    ws = Workspace.open(tmp_path / "ws")
    with ws.write() as conn:  # the -wal and -shm files exist while a connection is open
        conn.execute("INSERT INTO computes(name, size, created_at) VALUES ('c', 'local', 0)")
    assert mode(ws.root) == 0o700 and mode(ws.secrets_dir) == 0o700
    for path in private_files(ws.root):
        assert mode(path) == 0o600, path
    assert capsys.readouterr().err == ""  # nothing to tighten: no message


def test_an_older_workspace_is_tightened_once_with_a_message(
    tmp_path: Path, umask_022, capsys
) -> None:
    ws = Workspace.open(tmp_path / "ws")
    ws.db().execute("SELECT 1")
    secret = ws.secrets_dir / "endpoint-old.json"
    secret.write_text("{}")
    # as an older chattune left it: readable by every local user
    for path in (ws.root, ws.secrets_dir):
        path.chmod(0o755)
    for path in (*private_files(ws.root), secret):
        path.chmod(0o644)
    capsys.readouterr()

    Workspace.open(ws.root)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other users could read this workspace" in err
    assert f"{ws.root} 0755 -> 0700" in err and f"{secret} 0644 -> 0600" in err
    assert mode(ws.root) == 0o700 and mode(ws.secrets_dir) == 0o700
    for path in (*private_files(ws.root), secret):
        assert mode(path) == 0o600, path

    Workspace.open(ws.root)
    assert capsys.readouterr().err == ""  # once


def test_a_private_write_is_private_from_its_first_byte(tmp_path: Path) -> None:
    old = os.umask(0)  # the loosest umask: the mode must not come from it
    try:
        write_atomic(tmp_path / "secret.json", "{}", mode=0o600)
        write_atomic(tmp_path / "secret.json", '{"a": 1}', mode=0o600)
    finally:
        os.umask(old)
    assert mode(tmp_path / "secret.json") == 0o600
    assert (tmp_path / "secret.json").read_text() == '{"a": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]  # no temporary left
