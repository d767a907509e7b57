"""An instance's children (vLLM runs its engine core and workers as child processes) go with
it: when the supervisor stops it, kills it, or finds it exited on its own."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from chattune.serving.control.engines import Launch
from chattune.serving.control.instances import GroupSpec, Slot
from chattune.serving.deployments import ProbeSettings
from tests.serving.control.supervised import wait_for

# a server that starts a child (as vLLM's engine core), writes the child's pid, then waits;
# with an argument it exits at once, leaving the child behind
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
if len(sys.argv) > 2:
    sys.exit(0)
time.sleep(120)
"""


@dataclass(frozen=True)
class ParentEngine:
    pid_file: str
    exit_at_once: bool = False
    name: str = "parent"
    liveness_path: str = "/health"
    readiness_path: str = "/health"
    forwarded_paths: tuple[str, ...] = ()

    def command(self, launch: Launch) -> list[str]:
        return [sys.executable, "-c", PARENT, self.pid_file, *(["x"] if self.exit_at_once else [])]

    def env(self, launch: Launch) -> dict[str, str]:
        return {}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return False
    return state != "Z"


def started(tmp_path: Path, exit_at_once: bool = False) -> tuple[Slot, int]:
    pid_file = tmp_path / "child.pid"
    slot = Slot("g", 0, tmp_path / "instance-0.log")
    probes = ProbeSettings()
    slot.start(ParentEngine(str(pid_file), exit_at_once), GroupSpec("m"), probes, probes, "k")
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the child's pid")
    child = int(pid_file.read_text())
    assert alive(child)
    return slot, child


def gone(pid: int) -> bool:
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not alive(pid), 10, f"process {pid} to end")
    return not alive(pid)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stopping_or_killing_an_instance_ends_its_children(tmp_path: Path, how: str) -> None:
    slot, child = started(tmp_path)
    try:
        getattr(slot, how)()
        assert gone(child), f"the instance's child outlived {how}()"
    finally:
        with_suppressed_kill(child)


def test_an_instance_that_exited_leaves_no_children(tmp_path: Path) -> None:
    slot, child = started(tmp_path, exit_at_once=True)
    try:
        assert slot.proc is not None
        slot.proc.wait(30)
        slot.reap()  # what the supervisor does when it sees the exit
        assert gone(child), "the exited instance's child was left running"
    finally:
        with_suppressed_kill(child)


def with_suppressed_kill(pid: int) -> None:
    """Clean up a child a failing test left behind (only the one this test started)."""
    if alive(pid):
        os.kill(pid, 9)
