"""Step outputs cached by the hash of their inputs.

A step's output folder is `<workspace>/cache/<step>/<key>`; it counts as done once its
step marked it (`chattune.workspace.markers`: `_SUCCESS`, written last). `force_rerun`
adds the job name to the key, so the job gets fresh folders while a resumed job still
finds its own partial work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from chattune.workspace import Workspace


def input_key(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def step_dir(ws: Workspace, step: str, key: str) -> Path:
    return ws.root / "cache" / step / key
