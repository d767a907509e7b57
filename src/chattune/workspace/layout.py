"""Workspace folder layout.

```
<root>/
  workspace.json      layout version, creation time
  chattune.db         metadata: models, computes (SQLite, WAL), 0600
  secrets/            owner-only key files (0700, files 0600); see `permissions.py`
  models/<name>/<version>/   imported checkpoints (safetensors + tokenizer)
  datasets/           downloaded and converted data
  jobs/               job folders (logs, checkpoints, outputs)
  artifacts/          anything else a step keeps
  cache/<step>/<key>/ step outputs, keyed by the hash of their inputs
  mlflow/             MLflow tracking store (mlflow.db) and its artifacts
  locks/              flock files
```

The root is 0700: only its owner may read the workspace (`permissions.py`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from chattune import __version__
from chattune.errors import WorkspaceError
from chattune.workspace import db
from chattune.workspace.permissions import PRIVATE_DIR, SECRETS_DIR, tighten

LAYOUT_VERSION = 1
_SUBDIRS = ("models", "datasets", "jobs", "artifacts", "mlflow", "locks", "cache")


def default_home() -> Path:
    """`CHATTUNE_HOME` if set, else `~/.chattune`."""
    env = os.environ.get("CHATTUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".chattune"


@dataclass(eq=False)
class Workspace:
    """A chattune workspace folder. Open it with `Workspace.open()`.

    Example:
        >>> ws = Workspace.open("/tmp/ws")   # created on first use
        >>> ws.models_dir
        PosixPath('/tmp/ws/models')
    """

    root: Path
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @classmethod
    def open(cls, path: str | Path | None = None) -> Workspace:
        """Open the workspace at `path` (default: `default_home()`), creating it if missing.

        Raises:
            WorkspaceError: the folder holds a layout newer than this chattune, or is a file.
        """
        root = Path(path).expanduser().resolve() if path else default_home().resolve()
        if root.exists() and not root.is_dir():
            raise WorkspaceError(
                f"workspace path {root} is a file, not a folder.",
                fix="pass --workspace a folder path (it is created if missing).",
            )
        ws = cls(root)
        ws._ensure_layout()
        tighten(ws.root, ws.db_path.name)  # an older chattune's 0755/0644: made private
        ws.db()  # create and migrate the metadata database now, not halfway through a command
        return ws

    # -- paths ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "workspace.json"

    @property
    def db_path(self) -> Path:
        return self.root / "chattune.db"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def secrets_dir(self) -> Path:
        """Owner-only key files (0700; each file 0600)."""
        return self.root / SECRETS_DIR

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    @property
    def mlflow_tracking_uri(self) -> str:
        """`CHATTUNE_MLFLOW_TRACKING_URI` if set (any MLflow server), else the workspace's
        SQLite store. The store itself is created by MLflow on first use."""
        return os.environ.get("CHATTUNE_MLFLOW_TRACKING_URI") or (
            f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"
        )

    @property
    def mlflow_artifact_location(self) -> str:
        return (self.mlflow_dir / "artifacts").as_uri()

    # -- metadata database -----------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        """This thread's connection to the metadata database (opened once per thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = db.connect(self.db_path)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the metadata database (`BEGIN IMMEDIATE`)."""
        with db.transaction(self.db()) as conn:
            yield conn

    # -- layout ----------------------------------------------------------------------------
    def _ensure_layout(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        for sub in _SUBDIRS:
            (self.root / sub).mkdir(exist_ok=True)
        self.secrets_dir.mkdir(exist_ok=True, mode=PRIVATE_DIR)
        if not self.manifest_path.exists():
            manifest = {
                "layout_version": LAYOUT_VERSION,
                "created_at": time.time(),
                "created_by": f"chattune {__version__}",
            }
            tmp = self.manifest_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            try:
                # link() fails if another process created the manifest first: theirs stays
                os.link(tmp, self.manifest_path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        self._check_manifest()

    def _check_manifest(self) -> None:
        try:
            manifest = json.loads(self.manifest_path.read_text())
            found = int(manifest["layout_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkspaceError(
                f"{self.manifest_path} is damaged ({exc}).",
                fix="restore it, or use a new folder with --workspace.",
            ) from exc
        if found > LAYOUT_VERSION:
            raise WorkspaceError(
                f"workspace {self.root} has layout version {found}; this chattune knows "
                f"layout {LAYOUT_VERSION} at most.",
                fix="upgrade chattune, or use another folder with --workspace.",
            )
