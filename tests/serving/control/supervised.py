"""Helpers for tests that run endpoint supervisors: fake models, fast probes, and a cleanup
that kills every process the test started, whatever state it left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chattune.models.card import builtin_cards
from chattune.models.store import add_version
from chattune.workspace import Workspace

REPO = Path(__file__).resolve().parents[3]
FAST_PROBE = {
    "initial_delay": 0,
    "period": 0.2,
    "timeout": 0.5,
    "success_threshold": 1,
    "failure_threshold": 3,
}
FAST = {"liveness_probe": FAST_PROBE, "readiness_probe": FAST_PROBE}
# The real model server needs seconds to import torch before it listens: liveness waits.
REAL_PROBES = {
    "liveness": {**FAST_PROBE, "initial_delay": 15, "period": 1, "timeout": 2},
    "readiness": {**FAST_PROBE, "timeout": 2},
}
REAL_FLAGS = [
    f"--{kind}-{key.replace('_', '-')}={value}"
    for kind, probe in REAL_PROBES.items()
    for key, value in probe.items()
]


def processes_under(marker: str) -> list[int]:
    """Pids of processes whose command line contains `marker` (a test's tmp path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split(") ")[-1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def kill_all(marker: str) -> None:
    """SIGKILL every process naming `marker`, and the process group of each supervisor
    among them (its instances)."""
    for pid in processes_under(marker):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:  # a session leader: a supervisor and its children
                os.killpg(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def serving_ws(workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator:
    """The workspace, with instances run by the fake model server; every process whose
    command line names this test's tmp folder is SIGKILLed at the end."""
    monkeypatch.setenv("CHATTUNE_MODEL_SERVER", "tests.serving.control.fake_model_server")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    try:
        yield workspace
    finally:
        kill_all(str(tmp_path))


@pytest.fixture
def fake_model(workspace: Workspace, tmp_path: Path) -> Callable[..., str]:
    """Register a fake model (a folder with `fake.json`); returns `NAME:VERSION`."""

    def make(name: str = "fake", **behaviour: object) -> str:
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "fake.json").write_text(json.dumps(behaviour))
        card = builtin_cards()["SmolLM2-135M-Instruct"]
        mv = add_version(
            workspace, name=name, kind="registered", card=card, path=folder, source="test"
        )
        return f"{mv.name}:{mv.version}"

    return make


def wait_for(check: Callable[[], object], timeout_s: float = 30.0, what: str = "") -> object:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or check}")
