"""The one process helper: alive checks (zombies count as gone) and detached starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from chattune.workspace.processes import pid_alive, spawn_detached


def test_pid_alive_for_self_none_and_a_reaped_child() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(None)
    assert not pid_alive(0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as f:
            if f.read().split(") ")[-1].split()[0] == "Z":
                break
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()


def test_spawn_detached_runs_in_its_own_session_and_logs(tmp_path) -> None:
    log = tmp_path / "logs" / "out.log"
    code = "import time; print('started', flush=True); time.sleep(30)"
    pid = spawn_detached(["timeit", "-n", "1", "-r", "1", code], log)
    try:
        assert pid_alive(pid)
        assert os.getsid(pid) == pid  # its own session: Ctrl-C in our shell won't reach it
        deadline = time.monotonic() + 20
        while "started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "started" in log.read_text()  # unbuffered output, appended to the log
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert not pid_alive(pid)
