"""Processes chattune starts and watches: whether one is alive, and starting one detached.

Jobs' runners and endpoints' supervisors are started detached (their own session, so Ctrl-C
in the shell that ran the CLI does not reach them, and they outlive it), with their output
appended to a log file. Whether a recorded pid still runs is asked of psutil; a zombie (it
exited and its parent has not reaped it yet) counts as gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil


def pid_alive(pid: int | None) -> bool:
    """True while process `pid` runs (not a zombie). `None` or 0 is never alive."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else
        return True


def spawn_detached(module_args: Sequence[str], log: Path) -> int:
    """Run `python -m <module_args...>` detached, stdout and stderr appended to `log`.

    Returns the child's pid. The child has its own session (Ctrl-C in the starting shell does
    not reach it), no stdin, and unbuffered output so its log is live.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *module_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc.pid
