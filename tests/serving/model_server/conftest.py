"""The model server the black-box tests of this package share: a real subprocess on a free
port (stopped at the end), the conversation they send, and greedy reference answers."""

from __future__ import annotations

import time

import httpx
import pytest
import torch

from chattune.serving.model_server.chat import ChatPrompter
from tests.serving.conftest import ServerProc, start_model_server

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Can you tell me a joke about computers?"},
    {"role": "assistant", "content": "Why did the programmer quit his job?"},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "Because he did not get arrays."},
]


@pytest.fixture(scope="package")
def server(chatty_llama_dir, llama_adapters, tmp_path_factory) -> ServerProc:
    """One server for this package's tests; `seen` records /ready and /health while it loaded.

    fp32, as the reference: the default (auto) is bf16 on a CPU with bf16 instructions, and
    greedy text in bf16 parts from fp32's after a few tokens."""
    log = tmp_path_factory.mktemp("ms") / "server.log"
    flags = [f"--adapter={n}={p}" for n, p in llama_adapters.items()]
    srv = start_model_server(
        chatty_llama_dir, log, *flags, "--max-batch-size", "16", "--torch-threads", "1",
        "--dtype", "float32",
    )  # fmt: skip
    try:
        srv.seen = []  # type: ignore[attr-defined]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and srv.proc.poll() is None:
            try:
                ready = httpx.get(f"{srv.url}/ready", timeout=2).status_code
                health = httpx.get(f"{srv.url}/health", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            srv.seen.append((ready, health))  # type: ignore[attr-defined]
            if ready == 200:
                break
            time.sleep(0.05)
        srv.wait_ready(5)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="package")
def reference(chatty_llama_dir):
    """Greedy answers computed in this process with transformers alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chatty_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(chatty_llama_dir).eval()
    prompter = ChatPrompter(tok)
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]

    def greedy(messages: list[dict], n: int) -> tuple[str, int, int]:
        ids = prompter.encode(messages)
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos[0])[0, len(ids):]  # fmt: skip
        return tok.decode(out, skip_special_tokens=True), len(ids), len(out)

    return greedy
