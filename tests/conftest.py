from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import make_adapter, make_chatty, save_tiny_llama, save_tiny_phi3

# No test may reach a hub: fail fast instead of waiting on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A vLLM named by the shell would change what `--engine auto` picks in every serving test: it
# is kept for the vLLM tests only (tests/serving/vllm), which set it where they need it.
os.environ.setdefault("CHATTUNE_TEST_VLLM", os.environ.pop("CHATTUNE_VLLM", ""))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 32) with a ChatML tokenizer, saved as a HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_phi3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Phi-3 (hidden 32) with a Phi-3 tokenizer, saved as a HF folder."""
    return save_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh workspace in a temporary folder, also set as CHATTUNE_HOME."""
    from chattune.workspace import Workspace

    home = tmp_path / "ws"
    monkeypatch.setenv("CHATTUNE_HOME", str(home))
    return Workspace.open(home)


# Tiny models are initialised with std 0.02, so greedy decoding repeats one token: a test
# comparing token streams would prove little. `chatty_*` copies re-draw every weight but the
# norms with std 1.0: varied tokens, and top-2 logit gaps far above float noise, so batched
# and unbatched greedy runs must agree exactly.
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
