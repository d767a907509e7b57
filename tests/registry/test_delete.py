"""Deleting model versions: refused while a deployment uses them, and for catalog cards."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chattune.errors import InvalidParameter, ModelInUse, ModelNotFound
from chattune.jobs.store import JobRecord
from chattune.models.store import get_model, list_models
from chattune.registry import delete_model, model_lineage, register_model
from chattune.workspace import Workspace

JOB = "ft-job-1"


def deploy(ws: Workspace, endpoint: str, deployment: str, model: str, version: str) -> None:
    """Rows as the endpoint service writes them (schema v5; the clear keys of an older one)."""
    now = time.time()
    with ws.write() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO endpoints(name, primary_key_hash, secondary_key_hash,"
            " created_at, updated_at) VALUES (?, 'k1', 'k2', ?, ?)",
            (endpoint, now, now),
        )
        conn.execute(
            "INSERT INTO deployments(endpoint, name, model_name, model_version, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            (endpoint, deployment, model, version, now, now),
        )


def register(ws: Workspace, version: str | None = None):
    return register_model(
        ws,
        name="chat",
        path=f"jobs/{JOB}/outputs/trained_model",
        type="mlflow_model",
        version=version,
    )


def test_delete_is_refused_while_deployed_and_allowed_after(
    workspace: Workspace, job: JobRecord
) -> None:
    mv = register(workspace)
    source = Path(job.outputs["mlflow_model_folder"])
    deploy(workspace, "chat-ep", "blue", "chat", "1")
    deploy(workspace, "other-ep", "green", "chat", "1")
    with pytest.raises(ModelInUse) as err:
        delete_model(workspace, "chat", "1")
    msg = str(err.value)
    assert "deployment 'blue' of endpoint 'chat-ep'" in msg
    assert "deployment 'green' of endpoint 'other-ep'" in msg
    assert "chattune deployment delete --endpoint chat-ep --name blue" in msg
    assert get_model(workspace, "chat", "1").path == mv.path and (mv.path / "MLmodel").is_file()

    with workspace.write() as conn:
        conn.execute("DELETE FROM endpoints")  # cascades to the deployments
    deleted = delete_model(workspace, "chat", "1")
    assert deleted.version == "1"
    assert not mv.path.exists() and list(mv.path.parent.iterdir()) == []
    with pytest.raises(ModelNotFound, match="no model named 'chat'"):
        get_model(workspace, "chat")
    # the job's own output is untouched: only the registry's links went away
    assert (source / "MLmodel").is_file() and (source / "model" / "model.safetensors").is_file()


def test_delete_by_label_latest_and_other_versions_stay(
    workspace: Workspace, job: JobRecord
) -> None:
    register(workspace)
    register(workspace, "1732550400")
    deploy(workspace, "chat-ep", "blue", "chat", "1")  # uses the older version only
    assert delete_model(workspace, "chat", label="latest").version == "1732550400"
    assert [v.version for v in list_models(workspace, "chat")] == ["1"]
    with pytest.raises(ModelInUse):
        delete_model(workspace, "chat", label="latest")


def test_catalog_and_unnamed_versions_are_refused(workspace: Workspace) -> None:
    with pytest.raises(InvalidParameter, match="catalog versions cannot be deleted"):
        delete_model(workspace, "SmolLM2-135M-Instruct", "1")
    with pytest.raises(InvalidParameter, match="--version V, or --label latest"):
        delete_model(workspace, "SmolLM2-135M-Instruct")
    with pytest.raises(ModelNotFound, match="has no version '7'"):
        delete_model(workspace, "SmolLM2-135M-Instruct", "7")


def test_a_registered_folder_outside_the_workspace_survives_delete(
    workspace: Workspace, tiny_llama_dir: Path
) -> None:
    mv = register_model(workspace, name="plain", path=str(tiny_llama_dir), type="custom_model")
    assert model_lineage(workspace, "plain")["registered_from"] == str(tiny_llama_dir.resolve())
    delete_model(workspace, "plain", mv.version)
    assert not mv.path.exists() and (tiny_llama_dir / "config.json").is_file()


def test_lineage_of_a_catalog_version(workspace: Workspace) -> None:
    lin = model_lineage(workspace, "SmolLM2-135M-Instruct", label="latest")
    assert lin["source"] == "catalog" and "gguf_package" in lin["from"]
