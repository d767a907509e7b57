"""The SDK's deployment entity takes the engine (`engine="auto" | "vllm" | "builtin"`)."""

from __future__ import annotations

import pytest

from chattune.aml import MLClient
from chattune.aml.entities import ManagedOnlineDeployment
from chattune.identity import DefaultAzureCredential
from chattune.models.card import builtin_cards
from chattune.models.store import add_version
from chattune.serving import endpoints as E


@pytest.mark.parametrize(
    ("engine", "needle"),
    [
        ("vllm", "chattune engine install vllm"),  # asked for, not installed: refused
        ("tgi", "--engine: Input should be 'auto', 'vllm' or 'builtin'"),
    ],
)
def test_deployment_engine_is_checked_before_anything_starts(
    workspace, tiny_llama_dir, monkeypatch, engine: str, needle: str
) -> None:
    monkeypatch.setenv("CHATTUNE_VLLM", str(workspace.root / "no-vllm"))
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    add_version(workspace, name="tiny", kind="registered", card=card, path=tiny_llama_dir,
                source="test")  # fmt: skip
    E.create_endpoint(workspace, "ep-sdk", port=1)  # rows only: refused before any start
    client = MLClient(DefaultAzureCredential(), "sub", "rg", "ws", workspace_path=workspace.root)
    deployment = ManagedOnlineDeployment(
        name="dep-sdk", endpoint_name="ep-sdk", model="tiny:1", engine=engine
    )
    with pytest.raises(Exception) as err:
        client.online_deployments.begin_create_or_update(deployment).result()
    assert needle in str(err.value)
    assert list(client.online_deployments.list("ep-sdk")) == []  # nothing recorded
