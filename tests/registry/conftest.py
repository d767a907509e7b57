from __future__ import annotations

from pathlib import Path

import pytest

from chattune.jobs.store import JobRecord
from chattune.workspace import Workspace
from tests.registry.completed_job import make_adapter, make_job


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finetune output folder whose `model/` is a LoRA adapter on tiny Llama."""
    return make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("finetune"))


@pytest.fixture
def job(
    workspace: Workspace, tiny_llama_dir: Path, tiny_adapter: Path, tmp_path: Path
) -> JobRecord:
    """Job `ft-job-1`, Completed, with real convert outputs (see completed_job.py)."""
    data = tmp_path / "data"
    data.mkdir()
    return make_job(workspace, tiny_llama_dir, tiny_adapter, data)
