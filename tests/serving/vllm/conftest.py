"""The vLLM engine's tests run the real vLLM, in the environment `make test` builds once with
`chattune engine install vllm` (`.vllm-env/`), named by `$CHATTUNE_TEST_VLLM`. Without it
they fail, naming the command: they never skip silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import make_chatty, save_tiny_llama

TEST_ENV_VAR = "CHATTUNE_TEST_VLLM"


@pytest.fixture(scope="session")
def vllm_env_dir() -> Path:
    """vLLM's environment for the tests (set as `$CHATTUNE_VLLM` where a test needs it)."""
    named = os.environ.get(TEST_ENV_VAR, "")
    if not named or not (Path(named) / "bin" / "python").exists():
        pytest.fail(
            f"vLLM's test environment is missing (${TEST_ENV_VAR}={named!r}). Build it with "
            "`make .vllm-env/engines/vllm/engine.json` (that is `chattune engine install vllm "
            f"--workspace .vllm-env`), then set {TEST_ENV_VAR}=$PWD/.vllm-env/engines/vllm; "
            "`make test` does both.",
            pytrace=False,
        )
    return Path(named)


@pytest.fixture(scope="session")
def vllm_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chatty tiny Llama with head_dim 32: vLLM's CPU attention refuses the fixtures'
    head_dim of 8 (`Unsupported CPU attention configuration: head_dim=8`)."""
    tiny = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-h32"), head_dim=32)
    return make_chatty(tiny, tmp_path_factory.mktemp("chatty-llama-h32"))


@pytest.fixture(scope="session")
def engine_cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace root for the tests that check vLLM: its import is checked once."""
    return tmp_path_factory.mktemp("engine-ws")
