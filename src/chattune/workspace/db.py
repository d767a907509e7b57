"""The metadata database: SQLite in WAL mode, one connection per process and thread.

WAL lets readers run while one writer writes; `busy_timeout` makes a second writer wait
instead of failing with "database is locked"; every write runs in `BEGIN IMMEDIATE` so two
processes never interleave a read-modify-write. The database is created 0600, so its `-wal`
and `-shm` files (SQLite gives them the database's mode) are private too.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chattune.errors import WorkspaceError
from chattune.workspace.locks import file_lock
from chattune.workspace.permissions import create_private_file

# Each entry upgrades the schema from version i to i + 1 (statements split on ";", so no
# ";" inside comments or strings). Append, never edit: a
# workspace records the version it is at and runs only the steps it lacks.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE models (
        name        TEXT NOT NULL,
        version     TEXT NOT NULL,
        kind        TEXT NOT NULL,          -- imported | registered
        created_at  REAL NOT NULL,          -- unix seconds, `latest` = the largest
        path        TEXT,
        source      TEXT,
        card        TEXT NOT NULL,          -- JSON of the model card
        tags        TEXT NOT NULL DEFAULT '{}',
        description TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (name, version)
    );
    CREATE TABLE computes (
        name       TEXT PRIMARY KEY,
        size       TEXT NOT NULL,
        created_at REAL NOT NULL,
        spec       TEXT NOT NULL DEFAULT '{}'
    );
    """,
    """
    CREATE TABLE jobs (
        name        TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        experiment  TEXT NOT NULL,
        compute     TEXT NOT NULL,
        status      TEXT NOT NULL,          -- Queued, Running, Completed, Failed, Canceled
        created_at  REAL NOT NULL,
        started_at  REAL,
        ended_at    REAL,
        pid         INTEGER,                -- the runner process while it runs
        spec        TEXT NOT NULL,          -- JSON of the JobSpec
        steps       TEXT NOT NULL DEFAULT '{}',   -- step -> {status, output, cached, ...}
        outputs     TEXT NOT NULL DEFAULT '{}',   -- output name -> path
        metrics     TEXT NOT NULL DEFAULT '{}',
        mlflow_run_id TEXT,
        error       TEXT
    );
    CREATE INDEX jobs_queue ON jobs(compute, status, created_at)
    """,
    """
    CREATE TABLE endpoints (
        name        TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        auth_mode   TEXT NOT NULL DEFAULT 'key',
        primary_key TEXT NOT NULL,
        secondary_key TEXT NOT NULL,
        traffic     TEXT NOT NULL DEFAULT '{}',       -- deployment -> percent, sums to 0 or 100
        mirror_traffic TEXT NOT NULL DEFAULT '{}',    -- deployment -> percent (at most one, <= 50)
        tags        TEXT NOT NULL DEFAULT '{}',
        port        INTEGER,                          -- the gateway's port, kept across restarts
        pid         INTEGER,                          -- the supervisor process while it runs
        state       TEXT NOT NULL DEFAULT 'creating', -- creating|running|stopped|failed|deleting
        error       TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE deployments (
        endpoint    TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        model_name  TEXT NOT NULL,
        model_version TEXT NOT NULL,
        instance_type TEXT NOT NULL DEFAULT 'local',
        instance_count INTEGER NOT NULL DEFAULT 1,
        settings    TEXT NOT NULL DEFAULT '{}',       -- request settings, probes, lora_only (JSON)
        state       TEXT NOT NULL DEFAULT 'creating', -- creating | ready | failed | deleting
        error       TEXT,
        generation  INTEGER NOT NULL DEFAULT 1,       -- bumped by every update: instances restart
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (endpoint, name)
    );
    CREATE INDEX deployments_model ON deployments(model_name, model_version);
    CREATE TABLE instances (
        endpoint    TEXT NOT NULL,
        deployment  TEXT NOT NULL,
        idx         INTEGER NOT NULL,
        pid         INTEGER,
        port        INTEGER,
        state       TEXT NOT NULL,                    -- starting | ready | unhealthy | failed
        restarts    INTEGER NOT NULL DEFAULT 0,
        error       TEXT,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (endpoint, deployment, idx)
    )
    """,
    # v4: registered versions keep their lineage (JSON: job, base model, data hashes,
    # metrics) and Azure's asset type (mlflow_model | custom_model)
    """
    ALTER TABLE models ADD COLUMN lineage TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE models ADD COLUMN asset_type TEXT NOT NULL DEFAULT 'custom_model'
    """,
    # v5: endpoint keys are kept as digests ('sha256:<hex>'), never in clear; the clear keys
    # of older rows move to the owner-only keys file on first read (serving/endpoints.py)
    """
    ALTER TABLE endpoints RENAME COLUMN primary_key TO primary_key_hash;
    ALTER TABLE endpoints RENAME COLUMN secondary_key TO secondary_key_hash
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_MS = 30_000


def connect(path: Path) -> sqlite3.Connection:
    """Open the database at `path` in WAL mode, migrating it to `SCHEMA_VERSION`.

    Raises:
        WorkspaceError: the database was written by a newer chattune, or is not SQLite.
    """
    create_private_file(path)  # an empty file is an empty database; SQLite keeps its mode
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable in WAL mode, much faster
        conn.execute("PRAGMA foreign_keys = ON")
        # Switching to WAL takes an exclusive lock without waiting on the busy handler, so
        # processes opening a fresh workspace at once take turns through a file lock.
        with file_lock(path.with_name(path.name + ".lock")):
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise WorkspaceError(
            f"{path} is not a usable SQLite database ({exc}).",
            fix="point --workspace (or CHATTUNE_HOME) at another folder, or restore the file.",
        ) from exc
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row["value"]) if row else 0


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    if schema_version(conn) == SCHEMA_VERSION:
        return
    with transaction(conn):
        found = schema_version(conn)  # re-read under the write lock: another process may have won
        if found > SCHEMA_VERSION:
            raise WorkspaceError(
                f"{path} has schema version {found}, newer than this chattune knows "
                f"({SCHEMA_VERSION}).",
                fix="upgrade chattune (pip install -U chattune) or use another --workspace.",
            )
        for script in MIGRATIONS[found:]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(time.time()),)
        )


def scrub(conn: sqlite3.Connection) -> None:
    """Leave no copy of overwritten or deleted rows on disk: VACUUM rewrites the database
    without its free space, and a TRUNCATE checkpoint copies the WAL back and empties it
    (its old frames would keep every former version of a page). It waits for other
    connections' readers; call it outside a transaction, after removing a secret."""
    conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the database's write lock up front."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
