"""Run the installed `chattune` as a user does: a process, its stdout and stderr pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def chattune_cmd() -> list[str]:
    """The `chattune` script next to this python (the venv's), else `python -m chattune`."""
    script = Path(sys.executable).with_name("chattune")
    return [str(script)] if script.exists() else [sys.executable, "-m", "chattune"]


def chattune(
    home: Path, *args: str, columns: int = 80, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`chattune ARGS` with `CHATTUNE_HOME=home` and `COLUMNS=columns`; Python's default
    warning filters (no PYTHONWARNINGS), as a user's shell has them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(COLUMNS=str(columns), CHATTUNE_HOME=str(home))
    return subprocess.run(
        [*chattune_cmd(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
