from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.transformers
import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from chattune.errors import InvalidParameter
from chattune.train.convert import ConvertConfig, run_convert

TOKENS = [[5, 17, 42, 8, 99, 3, 120, 7, 64, 11]]


def logits(model, ids=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def load(path: Path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


def make_adapter(base_dir: Path, out: Path) -> Path:
    torch.manual_seed(1)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(load(base_dir), lora).save_pretrained(out)
    return out


def convert(tmp_path: Path, model_dir: Path, **kw) -> tuple[ConvertConfig, list[str]]:
    cfg = ConvertConfig(
        model_dir=model_dir,
        pytorch_model_folder=tmp_path / "out" / "pytorch",
        mlflow_model_folder=tmp_path / "out" / "mlflow",
        **kw,
    )
    lines: list[str] = []
    run_convert(cfg, lines.append)
    return cfg, lines


@pytest.fixture(scope="module")
def llama_adapter(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    return make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("llama-lora"))


@pytest.fixture(scope="module")
def adapted_logits(tiny_llama_dir: Path, llama_adapter: Path) -> torch.Tensor:
    """Base + adapter, applied by PEFT at run time (not merged)."""
    return logits(PeftModel.from_pretrained(load(tiny_llama_dir), llama_adapter).eval())


def test_merged_adapter_end_to_end(
    tiny_llama_dir: Path, llama_adapter: Path, adapted_logits: torch.Tensor, tmp_path: Path
) -> None:
    meta = {"base_model_name": "tiny-llama", "job_name": "job-1"}
    cfg, lines = convert(tmp_path, tiny_llama_dir, adapter_dir=llama_adapter, metadata=meta)
    pt, ml = cfg.pytorch_model_folder, cfg.mlflow_model_folder
    assert any("merging" in x for x in lines)

    # PyTorch folder: merged safetensors weights, no adapter, tokenizer with the template
    assert (pt / "model.safetensors").is_file() and (pt / "config.json").is_file()
    assert not (pt / "adapter").exists() and not (pt / "adapter_config.json").exists()
    merged = load(pt)
    assert not torch.allclose(adapted_logits, logits(load(tiny_llama_dir)), atol=1e-3)
    torch.testing.assert_close(logits(merged), adapted_logits, atol=1e-4, rtol=0)
    tok = AutoTokenizer.from_pretrained(pt)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template

    # MLflow folder: transformers flavor, chat task, our metadata, the merged weights
    mlmodel = yaml.safe_load((ml / "MLmodel").read_text())
    assert mlmodel["flavors"]["transformers"]["inference_task"] == "llm/v1/chat"
    assert "python_function" in mlmodel["flavors"]
    assert mlmodel["metadata"]["base_model_name"] == "tiny-llama"
    assert mlmodel["metadata"]["job_name"] == "job-1"
    reqs = (ml / "requirements.txt").read_text()
    assert "transformers==" in reqs and "torchvision" not in reqs
    assert not list((tmp_path / "out").glob(".*"))  # no staging folder left

    pipe = mlflow.transformers.load_model(str(ml))
    torch.testing.assert_close(logits(pipe.model), adapted_logits, atol=1e-4, rtol=0)
    assert pipe.tokenizer.chat_template == tok.chat_template
    out = pipe("Hello, how are you", max_new_tokens=8, do_sample=False)
    text = out[0]["generated_text"]
    assert text.startswith("Hello, how are you") and len(text) > len("Hello, how are you")

    chat = mlflow.pyfunc.load_model(str(ml)).predict(
        {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    )
    choice = chat[0]["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert chat[0]["usage"]["completion_tokens"] >= 1


def test_unmerged_adapter_is_kept_apart_and_mlflow_is_merged(
    tiny_llama_dir: Path, llama_adapter: Path, adapted_logits: torch.Tensor, tmp_path: Path
) -> None:
    cfg = ConvertConfig(
        model_dir=tiny_llama_dir,
        adapter_dir=llama_adapter,
        merge_lora_weights=False,
        pytorch_model_folder=tmp_path / "pt",
        mlflow_model_folder=tmp_path / "ml",
    )
    result = run_convert(cfg)
    assert result.adapter_folder == tmp_path / "pt" / "adapter"
    assert (result.adapter_folder / "adapter_config.json").is_file()
    # the top of the folder is the untouched base ...
    base = load(tmp_path / "pt")
    torch.testing.assert_close(logits(base), logits(load(tiny_llama_dir)), atol=0, rtol=0)
    # ... and base + adapter/ is the fine-tuned model
    tuned = PeftModel.from_pretrained(base, result.adapter_folder).eval()
    torch.testing.assert_close(logits(tuned), adapted_logits, atol=1e-5, rtol=0)
    # the MLflow model is the merged one, loadable without peft
    pipe = mlflow.transformers.load_model(str(tmp_path / "ml"))
    assert not isinstance(pipe.model, PeftModel)
    torch.testing.assert_close(logits(pipe.model), adapted_logits, atol=1e-4, rtol=0)


def test_full_model_without_adapter(tiny_phi3_dir: Path, tmp_path: Path) -> None:
    cfg, _ = convert(tmp_path, tiny_phi3_dir)
    ids = [[5, 9, 30, 7, 2]]
    expected = logits(load(tiny_phi3_dir), ids)
    torch.testing.assert_close(logits(load(cfg.pytorch_model_folder), ids), expected)
    pipe = mlflow.transformers.load_model(str(cfg.mlflow_model_folder))
    torch.testing.assert_close(logits(pipe.model, ids), expected)
    chat = pipe([{"role": "user", "content": "Hello"}], max_new_tokens=6, do_sample=False)
    assert chat[0]["generated_text"][-1]["role"] == "assistant"


def test_failure_leaves_previous_outputs(
    tiny_llama_dir: Path, llama_adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = convert(tmp_path, tiny_llama_dir)  # a first, complete run without the adapter
    before = logits(load(cfg.pytorch_model_folder))

    def broken(**_kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mlflow.transformers, "save_model", broken)
    again = cfg.model_copy(update={"adapter_dir": llama_adapter})
    with pytest.raises(RuntimeError, match="disk full"):
        run_convert(again)
    # the merged weights were written to staging, then thrown away: the old outputs remain
    torch.testing.assert_close(logits(load(cfg.pytorch_model_folder)), before, atol=0, rtol=0)
    assert (cfg.mlflow_model_folder / "MLmodel").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mlflow", "pytorch"]

    monkeypatch.undo()
    run_convert(again)  # a successful run replaces both
    assert not torch.allclose(logits(load(cfg.pytorch_model_folder)), before, atol=1e-3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mlflow", "pytorch"]


def test_bad_paths_are_reported_together(tiny_llama_dir: Path, tmp_path: Path) -> None:
    cfg = ConvertConfig(
        model_dir=tmp_path / "missing",
        adapter_dir=tmp_path / "nolora",
        pytorch_model_folder=tmp_path / "o",
        mlflow_model_folder=tmp_path / "o" / "mlflow",
    )
    with pytest.raises(InvalidParameter) as err:
        run_convert(cfg)
    msg = str(err.value)
    assert "`model_dir`" in msg and "`adapter_dir`" in msg and "overlap" in msg
    inside = ConvertConfig(
        model_dir=tiny_llama_dir,
        pytorch_model_folder=tiny_llama_dir / "out",
        mlflow_model_folder=tmp_path / "ml",
    )
    with pytest.raises(InvalidParameter, match=r"`pytorch_model_folder`.*overlaps `model_dir`"):
        run_convert(inside)
    assert not (tmp_path / "o").exists()


def test_model_without_chat_template_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    load(tiny_llama_dir).save_pretrained(plain)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    tok.save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(InvalidParameter, match="no chat template"):
        convert(tmp_path, plain)
