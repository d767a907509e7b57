"""`chattune up --watch` as a user runs it: a process watching a real endpoint (the real model
server on a tiny model); its supervisor is killed and the endpoint answers again without
anyone running a command."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from chattune.serving import endpoints as E
from chattune.workspace import Workspace
from chattune.workspace.processes import pid_alive
from tests.cli.process import chattune_cmd
from tests.cli.test_endpoint_cli import SEED_REQUEST, register, run
from tests.serving.control.supervised import REAL_FLAGS, kill_all, wait_for

RECOVER_TIMEOUT_S = 180.0  # generous: a loaded 2-core host imports torch slowly


def score(ep: E.Endpoint) -> int | None:
    """The status of one scoring request; None when nothing answers."""
    key = E.get_keys(Workspace.open(), ep.name).primary_key  # the test's CHATTUNE_HOME
    try:
        r = httpx.post(
            ep.scoring_uri,
            json=SEED_REQUEST,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            trust_env=False,
        )
    except httpx.HTTPError:
        return None
    return r.status_code


@pytest.mark.integration
def test_up_watch_brings_back_an_endpoint_whose_supervisor_was_killed(
    workspace, capsys, tiny_llama_dir, tmp_path: Path
) -> None:
    ws = workspace
    model = register(ws, tiny_llama_dir, tmp_path / "tiny")
    log = tmp_path / "watch.log"
    watcher: subprocess.Popen | None = None
    try:
        assert run(capsys, ws, "endpoint", "create", "watch-ep")[0] == 0
        code, _, err = run(
            capsys, ws, "deployment", "create", "-e", "watch-ep", "-n", "demo",
            "--model", model, *REAL_FLAGS,
        )  # fmt: skip
        assert code == 0, err
        code, _, err = run(capsys, ws, "endpoint", "update", "watch-ep", "--traffic", "demo=100")
        assert code == 0, err
        ep = E.get_endpoint(ws, "watch-ep")
        assert score(ep) == 200

        with log.open("wb") as out:
            watcher = subprocess.Popen(
                [*chattune_cmd(), "up", "--watch", "--workspace", str(ws.root)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "watching the endpoints" in log.read_text(), what="the watcher")
        victim = E.get_endpoint(ws, "watch-ep").pid  # the pid chattune recorded
        assert victim and pid_alive(victim)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        marks: dict[str, float] = {}
        while "200" not in marks:  # no command: the watcher alone brings it back
            assert time.monotonic() - killed < RECOVER_TIMEOUT_S, log.read_text()
            assert watcher.poll() is None, log.read_text()
            now = E.get_endpoint(ws, "watch-ep")
            if "restarted" not in marks and now.pid not in (None, victim):
                marks["restarted"] = time.monotonic() - killed
            if "restarted" in marks and score(now) == 200:
                marks["200"] = time.monotonic() - killed
            time.sleep(0.1)
        print(
            f"seconds to recover after kill -9 of the supervisor: supervisor restarted "
            f"{marks['restarted']:.1f} s, 200 again {marks['200']:.1f} s"
        )
        again = E.get_endpoint(ws, "watch-ep")
        assert again.port == ep.port and again.primary_key_hash == ep.primary_key_hash
        text = log.read_text()
        print(text)
        assert f"endpoint watch-ep: its supervisor (pid {victim}) is not running" in text
        assert f"restarted it (attempt 1, supervisor pid {again.pid})" in text

        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(30) == 0, log.read_text()
        assert "stopped watching; the endpoints keep running" in log.read_text()
        assert pid_alive(again.pid) and score(again) == 200  # it only watched
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
        kill_all(str(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_watch_stops_cleanly_on_a_signal(workspace, tmp_path: Path, sig: int) -> None:
    log = tmp_path / "watch.log"
    with log.open("wb") as out:
        watcher = subprocess.Popen(
            [
                *chattune_cmd(),
                "up",
                "--watch",
                "--interval",
                "0.1",
                "--workspace",
                str(workspace.root),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "watching the endpoints" in log.read_text(), what="the watcher")
        watcher.send_signal(sig)
        assert watcher.wait(30) == 0, log.read_text()
        assert log.read_text().rstrip().endswith("stopped watching; the endpoints keep running")
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
