"""`models.loading`: the one dtype rule (`compute_dtype`), the model server's `serving_dtype`,
and the tokenizer loader."""

from __future__ import annotations

import pytest
import torch

from chattune.errors import InvalidParameter
from chattune.host import machine
from chattune.models.loading import SERVING_DTYPES, compute_dtype, load_tokenizer, serving_dtype

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.mark.parametrize(("hw_bf16", "want"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_is_bf16_only_with_bf16_instructions(monkeypatch, hw_bf16, want):
    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: hw_bf16)
    assert serving_dtype(CPU) is want
    assert serving_dtype(CPU, "auto") is want


@pytest.mark.parametrize("name", [n for n in SERVING_DTYPES if n != "auto"])
def test_a_named_dtype_is_taken_as_it_is(monkeypatch, name):
    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: False)
    assert serving_dtype(CPU, name) is getattr(torch, name)


def test_an_unknown_dtype_names_the_choices_and_the_fix():
    with pytest.raises(InvalidParameter) as e:
        serving_dtype(CPU, "fp8")
    text = str(e.value) + str(getattr(e.value, "fix", ""))
    assert "'fp8'" in text and "float32" in text and "auto" in text


def test_half_precision_on_a_cpu_is_bf16_only_with_bf16_instructions(monkeypatch):
    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: False)
    assert compute_dtype("16", CPU) is torch.float32  # emulated bf16: too slow
    assert compute_dtype("bf16", CPU) is torch.float32
    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: True)
    assert compute_dtype("16", CPU) is torch.bfloat16  # fp16 matmuls: slow or missing
    assert compute_dtype("bf16", CPU) is torch.bfloat16
    assert compute_dtype("32", CPU) is torch.float32


@pytest.mark.parametrize("gpu_bf16", [True, False])
def test_on_a_gpu_bf16_falls_back_to_fp16_before_ampere(monkeypatch, gpu_bf16):
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: gpu_bf16)
    half = torch.bfloat16 if gpu_bf16 else torch.float16
    assert compute_dtype("bf16", CUDA) is half
    assert compute_dtype("auto", CUDA) is half
    assert serving_dtype(CUDA) is half
    assert compute_dtype("16", CUDA) is torch.float16
    assert compute_dtype("32", CUDA) is torch.float32


def test_a_tokenizer_without_chat_template_is_refused_when_one_is_needed(tiny_llama_dir, tmp_path):
    tok = load_tokenizer(tiny_llama_dir)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path, chat_template=False).chat_template is None
    with pytest.raises(InvalidParameter, match="no chat template") as e:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(e.value) and "chat_template" in str(e.value.fix)


def test_a_merged_adapter_gives_the_unmerged_models_logits(tiny_llama_dir, tmp_path):
    """merge=True (the evaluate step): one plain model whose logits are the PeftModel's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chattune.models.checkpoint import checkpoint
    from chattune.models.loading import load_model

    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)  # fmt: skip
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora).save_pretrained(
        tmp_path / "lora"
    )
    ckpt = checkpoint(tiny_llama_dir, tmp_path / "lora")
    cpu = torch.device("cpu")
    peft, names = load_model(ckpt, device=cpu, dtype=torch.float32)
    merged, none = load_model(ckpt, device=cpu, dtype=torch.float32, merge=True)
    assert names == ["default"] and none == []
    assert not hasattr(merged, "peft_config")
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.inference_mode():
        want, got = peft(input_ids=ids).logits, merged(input_ids=ids).logits
    base, _ = load_model(checkpoint(tiny_llama_dir), device=cpu, dtype=torch.float32)
    with torch.inference_mode():
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-4)  # it does change
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
