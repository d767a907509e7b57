"""The seed's calls for steps 1-5 on `chattune.aml`: client, catalog, compute, component."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from chattune.aml import Input, MLClient
from chattune.aml._component import model_reference
from chattune.aml.constants import AssetTypes
from chattune.aml.dsl import pipeline
from chattune.aml.entities import AmlCompute, EndpointAuthKeys, Model
from chattune.aml.exceptions import ResourceNotFoundError, ValidationException
from chattune.identity import DefaultAzureCredential, InteractiveBrowserCredential


@pytest.fixture
def clients(workspace):
    cred = DefaultAzureCredential()
    ws_client = MLClient(cred, "sub", "rg", "ws", workspace_path=workspace.root)
    registry = MLClient(cred, registry_name="azureml", workspace_path=workspace.root)
    return ws_client, registry


def test_credentials_need_no_login() -> None:
    for cred in (DefaultAzureCredential(), InteractiveBrowserCredential()):
        token = cred.get_token("https://management.azure.com/.default")
        assert token.token and token.expires_on > 0


def test_from_config_finds_config_json_upwards(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml" / "config.json").write_text(
        json.dumps(
            {
                "subscription_id": "s",
                "resource_group": "rg",
                "workspace_name": "w",
                "chattune_home": "home",
            }
        )
    )
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    ml = MLClient.from_config(credential=DefaultAzureCredential())
    assert (ml.subscription_id, ml.resource_group_name, ml.workspace_name) == ("s", "rg", "w")
    assert ml.workspace_path == tmp_path / ".azureml" / "home"


def test_from_config_without_a_file_raises_so_the_seed_falls_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationException, match=r"config\.json"):
        MLClient.from_config(credential=DefaultAzureCredential())


def test_registry_models_get_latest_with_tags(clients) -> None:
    _, registry = clients
    m = registry.models.get("SmolLM2-135M-Instruct", label="latest")
    assert m.name == "SmolLM2-135M-Instruct" and m.version == "1"
    assert m.id == "azureml://registries/azureml/models/SmolLM2-135M-Instruct/versions/1"
    allow = ast.literal_eval(m.tags["finetune_compute_allow_list"])
    assert "Standard_NC6s_v3" in allow  # the seed's size passes its allow-list check
    assert isinstance(ast.literal_eval(m.tags["model_specific_defaults"]), dict)
    phi = registry.models.get("Phi-3-mini-4k-instruct", label="latest")
    assert ast.literal_eval(phi.tags["model_specific_defaults"])["apply_lora"] == "true"


def test_unknown_model_raises_resource_not_found(clients) -> None:
    _, registry = clients
    with pytest.raises(ResourceNotFoundError, match="no model 'Phi-9'") as info:
        registry.models.get("Phi-9", label="latest")
    assert "SmolLM2-135M-Instruct" in str(info.value)  # the message lists what exists
    with pytest.raises(ValidationException, match="exclusive"):
        registry.models.get("SmolLM2-135M-Instruct", version="1", label="latest")


def test_compute_get_create_and_list_sizes_as_the_seed_uses_them(clients) -> None:
    ml, _ = clients
    with pytest.raises(ResourceNotFoundError, match="gpu-cluster-big"):
        ml.compute.get("gpu-cluster-big")
    compute = AmlCompute(
        name="gpu-cluster-big",
        size="Standard_NC6s_v3",
        max_instances=2,
        idle_time_before_scale_down=120,
        tier="Dedicated",
    )
    ml.begin_create_or_update(compute).wait()
    got = ml.compute.get("gpu-cluster-big")
    assert (got.size, got.provisioning_state, got.max_instances) == (
        "Standard_NC6s_v3",
        "Succeeded",
        2,
    )
    sizes = {s.name.lower(): s.gpus for s in ml.compute.list_sizes()}
    assert "standard_nc6s_v3" in sizes and sizes["local"] == sizes["standard_nc6s_v3"]
    with pytest.raises(ValidationException, match="compute name"):
        ml.begin_create_or_update(AmlCompute(name="-bad", size="local")).result()


def test_component_call_checks_every_parameter_at_once(clients) -> None:
    _, registry = clients
    component = registry.components.get(name="chat_completion_pipeline", label="latest")
    with pytest.raises(ValidationException) as info:
        component(
            mlflow_model_path="azureml:SmolLM2-135M-Instruct:1",
            train_file_path=Input(type="uri_file", path="t.jsonl"),
            learning_rat=1e-4,
            lora_r=0,
        )
    assert "learning_rat" in str(info.value) and "lora_r" in str(info.value)
    with pytest.raises(ResourceNotFoundError):
        registry.components.get(name="text_classification_pipeline", label="latest")


def test_dsl_pipeline_builds_a_job_with_the_seed_outputs(clients) -> None:
    _, registry = clients
    component = registry.components.get(name="chat_completion_pipeline", label="latest")
    model = registry.models.get("SmolLM2-135M-Instruct", label="latest")

    @pipeline(name="smol-chitchat")
    def create_pipeline():
        node = component(
            mlflow_model_path=model.id,
            compute_finetune="local",
            train_file_path=Input(type="uri_file", path="./train_sft.jsonl"),
            test_file_path=Input(type="uri_file", path="./test_sft.jsonl"),
            number_of_gpu_to_use_finetuning=0,
            apply_lora="true",
            deepspeed_stage=2,
        )
        return {"trained_model": node.outputs.mlflow_model_folder}

    job = create_pipeline()
    job.settings.force_rerun = True
    assert job.display_name == "smol-chitchat" and job.name is None
    assert job.outputs["trained_model"].path == "mlflow_model_folder"
    assert job._node.model == "SmolLM2-135M-Instruct:1"
    assert job._node.files["train_file"] == "./train_sft.jsonl"

    @pipeline()
    def no_component():
        return {}

    with pytest.raises(ValidationException, match="0 times"):
        no_component()


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (
            "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/7",
            "Phi-3-mini-4k-instruct:7",
        ),
        ("azureml:smol-ft:1732550400", "smol-ft:1732550400"),
        ("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
    ],
)
def test_model_references(ref: str, expected: str) -> None:
    assert model_reference(ref) == expected


def test_entities_print_and_keep_keys_secret() -> None:
    m = Model(
        path="azureml://jobs/j/outputs/trained_model",
        type=AssetTypes.MLFLOW_MODEL,
        name="x",
        version="1",
    )
    assert "path: azureml://jobs/j/outputs/trained_model" in str(m)
    keys = EndpointAuthKeys(primary_key="secret-1", secondary_key="secret-2")
    assert "secret" not in repr(keys) and "secret" not in str(keys)
