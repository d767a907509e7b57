"""`models.checkpoint`: the four folder layouts, the base id; adapters refused on another base."""

from __future__ import annotations

import shutil

import pytest
import torch

from chattune.errors import ChattuneError
from chattune.models.checkpoint import checkpoint, resolve_checkpoint
from chattune.models.loading import load_model, load_tokenizer


def test_resolve_checkpoint_layouts(chatty_llama_dir, llama_adapters, tmp_path):
    hf = resolve_checkpoint(chatty_llama_dir)
    assert (hf.kind, hf.adapter_dir, hf.tokenizer_dir) == ("hf", None, chatty_llama_dir)
    assert len(hf.base_id) == 16

    pt = tmp_path / "pytorch_model_folder"
    shutil.copytree(chatty_llama_dir, pt)
    shutil.copytree(llama_adapters["a1"], pt / "adapter")
    ck = resolve_checkpoint(pt)
    assert (ck.kind, ck.adapter_dir, ck.base_id) == ("pytorch_model_folder", pt / "adapter",
                                                     hf.base_id)  # fmt: skip

    bare = resolve_checkpoint(llama_adapters["a2"])
    assert bare.kind == "peft_adapter" and bare.model_dir == chatty_llama_dir.resolve()
    assert bare.base_id == hf.base_id

    from chattune.train.convert import ConvertConfig, run_convert

    run_convert(ConvertConfig(
        model_dir=chatty_llama_dir, pytorch_model_folder=tmp_path / "pt2",
        mlflow_model_folder=tmp_path / "mlflow",
    ))  # fmt: skip
    ml = resolve_checkpoint(tmp_path / "mlflow")
    assert ml.kind == "mlflow"
    assert ml.model_dir == (tmp_path / "mlflow" / "model").resolve()
    assert ml.tokenizer_dir.name == "tokenizer"
    assert load_tokenizer(ml).chat_template

    other = tmp_path / "other"
    shutil.copytree(chatty_llama_dir, other)
    (other / "model.safetensors").write_bytes(b"x" * 10)
    assert resolve_checkpoint(other).base_id != hf.base_id

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(ChattuneError, match=r"no config\.json.*notes\.txt"):
        resolve_checkpoint(tmp_path / "junk")


def test_adapter_for_another_base_is_refused(chatty_llama_dir, chatty_phi3_dir, llama_adapters):
    ckpt = resolve_checkpoint(chatty_phi3_dir)
    with pytest.raises(ChattuneError, match="trained on base"):
        load_model(ckpt, {"a1": llama_adapters["a1"]}, device=torch.device("cpu"),
                   dtype=torch.float32)  # fmt: skip


def test_the_tokenizer_saved_with_an_adapter_wins(chatty_llama_dir, llama_adapters, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(llama_adapters["a1"], adapter)
    assert checkpoint(chatty_llama_dir, adapter).tokenizer_dir == chatty_llama_dir
    load_tokenizer(chatty_llama_dir).save_pretrained(adapter)
    assert checkpoint(chatty_llama_dir, adapter).tokenizer_dir == adapter
    assert checkpoint(chatty_llama_dir).base_id == resolve_checkpoint(chatty_llama_dir).base_id
