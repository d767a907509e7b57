"""Shared serving fixtures: tiny models that say varied things, LoRA adapters on them, and a
model server subprocess on a free port that is always stopped.

The session's tiny models (tests/tiny_models.py) are initialised with std 0.02, so greedy
decoding repeats one token: a test comparing token streams would prove little. `chatty_*`
copies re-draw every weight but the norms with std 1.0: varied tokens, and top-2 logit gaps
far above float noise, so batched and unbatched greedy runs must agree exactly.
"""

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
import torch

REPO = Path(__file__).resolve().parents[2]


def make_chatty(src: Path, dst: Path, seed: int = 1, std: float = 1.0) -> Path:
    """Copy the model of `src` to `dst` with every non-norm weight redrawn N(0, std)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "norm" not in name:
                w.copy_(torch.randn(w.shape, generator=gen) * std)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def make_adapter(base: Path, dst: Path, seed: int, r: int = 4) -> Path:
    """A LoRA adapter on `base` with random non-zero A and B (PEFT zeroes B at init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in peft_model.named_parameters():
            if "lora_" in name:
                w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(dst)
    return dst


@pytest.fixture(scope="session")
def chatty_llama_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chatty(tiny_llama_dir, tmp_path_factory.mktemp("chatty-llama"))


@pytest.fixture(scope="session")
def chatty_phi3_dir(tiny_phi3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chatty(tiny_phi3_dir, tmp_path_factory.mktemp("chatty-phi3"))


@pytest.fixture(scope="session")
def llama_adapters(chatty_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two different LoRA adapters on `chatty_llama_dir`, by name."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a1": make_adapter(chatty_llama_dir, root / "a1", seed=11),
        "a2": make_adapter(chatty_llama_dir, root / "a2", seed=22),
    }


# -- a model server subprocess ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    """A running model server: `url`, its `proc` and the file its output goes to."""

    url: str
    proc: subprocess.Popen
    log_path: Path

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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_model_server(model_dir: Path, log_path: Path, *extra: str) -> ServerProc:
    """Start `python -m chattune.serving.model_server` on a free port (not waiting)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "chattune.serving.model_server",
        "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
        "--served-name", "tiny", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    f = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    f.close()
    return ServerProc(f"http://127.0.0.1:{port}", proc, log_path)


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
