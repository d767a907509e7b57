from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from chattune.errors import WorkspaceError
from chattune.workspace import LAYOUT_VERSION, Workspace, default_home
from chattune.workspace import db as wsdb


def test_created_on_first_use_with_layout(tmp_path: Path) -> None:
    root = tmp_path / "new" / "ws"
    ws = Workspace.open(root)
    assert ws.root == root.resolve()
    for sub in ("models", "datasets", "jobs", "artifacts", "mlflow", "locks"):
        assert (root / sub).is_dir()
    manifest = json.loads((root / "workspace.json").read_text())
    assert manifest["layout_version"] == LAYOUT_VERSION
    conn = sqlite3.connect(root / "chattune.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == wsdb.SCHEMA_VERSION


def test_default_home_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    assert Workspace.open().root == (tmp_path / "h").resolve()
    monkeypatch.delenv("CHATTUNE_HOME")
    assert default_home() == Path.home() / ".chattune"


def test_reopen_keeps_data(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path)
    with ws.write() as conn:
        conn.execute("INSERT INTO computes(name, size, created_at) VALUES ('c1', 'local', 0)")
    again = Workspace.open(tmp_path)
    assert again.db().execute("SELECT name FROM computes").fetchone()["name"] == "c1"


def test_newer_layout_refused_with_fix(tmp_path: Path) -> None:
    Workspace.open(tmp_path)
    (tmp_path / "workspace.json").write_text(json.dumps({"layout_version": LAYOUT_VERSION + 1}))
    with pytest.raises(WorkspaceError) as err:
        Workspace.open(tmp_path)
    assert f"layout version {LAYOUT_VERSION + 1}" in err.value.message
    assert "upgrade chattune" in (err.value.fix or "")


def test_newer_schema_refused(tmp_path: Path) -> None:
    Workspace.open(tmp_path)
    conn = sqlite3.connect(tmp_path / "chattune.db")
    conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(WorkspaceError, match="schema version 999"):
        Workspace(tmp_path.resolve()).db()


def test_file_instead_of_folder(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(WorkspaceError, match="is a file, not a folder"):
        Workspace.open(f)


def test_not_a_database(tmp_path: Path) -> None:
    Workspace.open(tmp_path)
    for p in tmp_path.glob("chattune.db*"):
        p.unlink()
    (tmp_path / "chattune.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(WorkspaceError, match="not a usable SQLite database"):
        Workspace(tmp_path.resolve()).db()


def test_mlflow_store_in_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.open(tmp_path)
    assert ws.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    monkeypatch.setenv("CHATTUNE_MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert ws.mlflow_tracking_uri == "http://mlflow.example:5000"


def _writer(root: str, worker: int, n: int) -> None:
    ws = Workspace.open(root)
    for i in range(n):
        with ws.write() as conn:
            # read-modify-write: loses updates unless transactions really serialize
            row = conn.execute("SELECT value FROM meta WHERE key='counter'").fetchone()
            value = int(row["value"]) if row else 0
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('counter', ?)", (str(value + 1),)
            )
            conn.execute(
                "INSERT INTO computes(name, size, created_at) VALUES (?, 'local', 0)",
                (f"w{worker}-{i}",),
            )


def test_several_processes_share_the_database(tmp_path: Path) -> None:
    """4 processes opening a fresh workspace at once and writing 50 times each lose nothing."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ws = Workspace.open(tmp_path)
    assert ws.db().execute("SELECT COUNT(*) AS n FROM computes").fetchone()["n"] == 200
    counter = ws.db().execute("SELECT value FROM meta WHERE key='counter'").fetchone()["value"]
    assert counter == "200"
