"""Shared serving fixtures: a model server subprocess on a free port that is always stopped,
with its key (`client` sends it).
The tiny models that say varied things and their LoRA adapters (`chatty_llama_dir`,
`llama_adapters`) are session fixtures of tests/conftest.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chattune.serving.keys import INSTANCE_KEY_ENV, bearer, new_key

REPO = Path(__file__).resolve().parents[2]


# -- a model server subprocess ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    """A running model server: `url`, its `proc`, the file its output goes to, its `key`,
    and `client`, an httpx client on `url` that sends the key."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    key: str

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": bearer(self.key)})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"model server exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"model server not ready in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_model_server(model_dir: Path, log_path: Path, *extra: str) -> ServerProc:
    """Start `python -m chattune.serving.model_server` on a free port (not waiting), with a
    fresh key in its environment, as the supervisor starts it."""
    port, key = free_port(), new_key()
    cmd = [
        sys.executable, "-m", "chattune.serving.model_server",
        "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--served-name", "tiny", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), INSTANCE_KEY_ENV: key}
    f = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    f.close()
    return ServerProc(f"http://127.0.0.1:{port}", proc, log_path, key)


@pytest.fixture
def model_server_factory(tmp_path: Path) -> Iterator:
    """Call it with (model_dir, *flags) to start model servers; all are stopped afterwards."""
    started: list[ServerProc] = []

    def start(model_dir: Path, *extra: str, wait: bool = True) -> ServerProc:
        server = start_model_server(model_dir, tmp_path / f"server{len(started)}.log", *extra)
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
