from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import save_tiny_llama, save_tiny_phi3

# No test may reach a hub: fail fast instead of waiting on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
