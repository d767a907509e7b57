from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import ValidationError
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from transformers import AutoModelForCausalLM, AutoTokenizer

from chattune.errors import DatasetInvalid, InvalidParameter
from chattune.evaluate.replies import generate_replies, prompt_ids
from chattune.evaluate.step import EvaluateConfig, run_evaluate
from chattune.models.checkpoint import checkpoint
from chattune.models.loading import load_model, load_tokenizer

CONVERSATIONS = [
    [
        {"role": "user", "content": "Hello, how are you doing today?"},
        {"role": "assistant", "content": "I am fine, thank you. What about you?"},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital of France."},
    ],
    [
        {"role": "user", "content": "Can you tell me a joke about computers?"},
        {"role": "assistant", "content": "Why did the programmer quit his job?"},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because he did not get arrays."},
    ],
    [  # no assistant message: no perplexity label, skipped for generation
        {"role": "user", "content": "Numbers: 0 1 2 3"},
    ],
    [  # ends on the user: the last assistant message is the middle one
        {"role": "user", "content": "The weather is nice and sunny in the park."},
        {"role": "assistant", "content": "Fine-tuning a chat model needs data."},
        {"role": "user", "content": "And patience."},
    ],
]


def encode(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """input_ids of the whole conversation; labels only on what follows the last prompt."""
    full = tok.apply_chat_template(messages, tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return ids, [-100] * len(ids)
    prompt = tok.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    return ids, [-100] * n + ids[n:]


def write_test_split(model_dir: Path, out: Path, conversations=CONVERSATIONS) -> Path:
    tok = AutoTokenizer.from_pretrained(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [encode(tok, c) for c in conversations]
    table = pa.table({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows]})
    pq.write_table(table, out / "test.parquet")
    write_messages(out / "test_messages.jsonl", conversations)
    return out


def write_messages(path: Path, conversations) -> None:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))


def make_adapter(base_dir: Path, out: Path) -> Path:
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, lora).save_pretrained(out)
    return out


def direct_nll(model, data_dir: Path) -> float:
    """Token-weighted mean NLL with transformers' own causal-LM loss, one row at a time."""
    table = pq.read_table(data_dir / "test.parquet").to_pylist()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in table:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            n = int((labels[0, 1:] != -100).sum())
            if n:
                total += model(input_ids=ids, labels=labels).loss.item() * n
                count += n
    return total / count


def cfg(model_dir: Path, data: Path, out: Path, **kw) -> EvaluateConfig:
    return EvaluateConfig(
        model_dir=model_dir,
        test_tokenized=data / "test.parquet",
        test_messages=data / "test_messages.jsonl",
        output_dir=out,
        **{"sample_size": 0, "batch_size": 2, "max_new_tokens": 12, **kw},
    )


@pytest.fixture(scope="module")
def llama_data(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    return write_test_split(tiny_llama_dir, tmp_path_factory.mktemp("llama-data"))


@pytest.fixture(scope="module")
def phi3_data(tiny_phi3_dir: Path, tmp_path_factory) -> Path:
    return write_test_split(tiny_phi3_dir, tmp_path_factory.mktemp("phi3-data"))


@pytest.fixture(scope="module")
def llama_adapter(tiny_llama_dir: Path, tmp_path_factory) -> Path:
    return make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("llama-lora"))


# -- perplexity ------------------------------------------------------------------------------


def test_perplexity_matches_direct_computation(
    tiny_llama_dir: Path, llama_data: Path, tmp_path: Path
) -> None:
    metrics = run_evaluate(cfg(tiny_llama_dir, llama_data, tmp_path, batch_size=2))
    assert set(metrics) == {"eval_loss", "perplexity"}  # sample_size 0: no generation
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-12)
    expected = direct_nll(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), llama_data)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)
    # a random model over a ~400-token vocabulary: loss near ln(V), far from 0
    assert 3.0 < metrics["eval_loss"] < 10.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "predictions.jsonl").read_text() == ""
    # packing does not change the result: every conversation alone in its forward
    one = run_evaluate(cfg(tiny_llama_dir, llama_data, tmp_path / "b1", packed_tokens=1))
    assert one["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


def test_adapter_changes_perplexity(
    tiny_llama_dir: Path, llama_data: Path, llama_adapter: Path, tmp_path: Path
) -> None:
    base = run_evaluate(cfg(tiny_llama_dir, llama_data, tmp_path / "base"))
    tuned = run_evaluate(
        cfg(tiny_llama_dir, llama_data, tmp_path / "lora", adapter_dir=llama_adapter)
    )
    assert abs(tuned["perplexity"] - base["perplexity"]) > 1e-3 * base["perplexity"]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), llama_adapter
    ).eval()
    assert tuned["eval_loss"] == pytest.approx(direct_nll(model, llama_data), rel=1e-4)


def test_half_precision_on_cpu_is_bf16_and_close(
    tiny_llama_dir: Path, llama_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dtype rule itself is tested in tests/models/test_loading.py."""
    from chattune.host import machine

    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: True)  # bf16 even if emulated
    full = run_evaluate(cfg(tiny_llama_dir, llama_data, tmp_path / "32"))
    half = run_evaluate(cfg(tiny_llama_dir, llama_data, tmp_path / "16", precision=16))
    assert half["eval_loss"] == pytest.approx(full["eval_loss"], rel=2e-2)


# -- generation ------------------------------------------------------------------------------


def test_batched_generation_equals_one_at_a_time(
    tiny_phi3_dir: Path, tiny_llama_dir: Path, llama_adapter: Path
) -> None:
    prompts = [c[:-1] for c in CONVERSATIONS[:3]]  # prompts of different lengths
    cpu = torch.device("cpu")
    for model_dir, adapter in ((tiny_phi3_dir, None), (tiny_llama_dir, llama_adapter)):
        ckpt = checkpoint(model_dir, adapter)
        tok = load_tokenizer(ckpt)
        model, adapters = load_model(ckpt, device=cpu, dtype=torch.float32)
        assert len({len(ids) for ids in prompt_ids(tok, prompts)}) == len(prompts)
        ids = prompt_ids(tok, prompts)
        batched = generate_replies(model, tok, ids, 12, batch_size=3, adapters=adapters)
        single = generate_replies(model, tok, ids, 12, batch_size=1, adapters=adapters)
        assert batched == single
        assert any(batched), "the model generated nothing: the comparison would prove nothing"


def test_bleu_rouge_are_one_when_prediction_equals_reference(
    tiny_phi3_dir: Path, phi3_data: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    first = run_evaluate(
        cfg(
            tiny_phi3_dir, phi3_data, tmp_path / "a", sample_size=3, batch_size=2, max_new_tokens=40
        ),
        lines.append,
    )
    assert "generated 2/3" in lines and "generated 3/3" in lines
    records = [
        json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()
    ]
    # the first 3 conversations with an assistant message (row 3 has none, so it is skipped)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[2]["reference"] == "Because he did not get arrays."
    assert records[2]["prompt"] == CONVERSATIONS[2][:-1]
    assert all(first[k] < 0.5 for k in ("bleu_1", "rouge1", "rougeL"))  # random model vs text

    # Make the greedy generations the references: the prompts are unchanged, so the model
    # generates the same text again and every overlap metric must be exactly 1.
    preds = [r["prediction"] for r in records]
    assert all(len(Tokenizer13a()(p).split()) >= 4 for p in preds), preds
    same = [list(c) for c in CONVERSATIONS]
    for r, pred in zip(records, preds, strict=True):
        same[r["index"]] = [*same[r["index"]][:-1], {"role": "assistant", "content": pred}]
    data = tmp_path / "same"
    data.mkdir()
    (data / "test.parquet").write_bytes((phi3_data / "test.parquet").read_bytes())
    write_messages(data / "test_messages.jsonl", same)
    second = run_evaluate(
        cfg(tiny_phi3_dir, data, tmp_path / "b", sample_size=3, batch_size=2, max_new_tokens=40)
    )
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert second[key] == pytest.approx(1.0, abs=1e-9), key
    assert second["perplexity"] == first["perplexity"]


# -- inputs ----------------------------------------------------------------------------------


def test_missing_inputs_are_reported_together(tmp_path: Path) -> None:
    bad = EvaluateConfig(
        model_dir=tmp_path / "nope",
        adapter_dir=tmp_path / "nolora",
        test_tokenized=tmp_path / "t.parquet",
        test_messages=tmp_path / "m.jsonl",
        output_dir=tmp_path / "out",
    )
    with pytest.raises(InvalidParameter) as err:
        run_evaluate(bad)
    for field in ("`model_dir`", "`adapter_dir`", "`test_tokenized`", "`test_messages`"):
        assert field in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValidationError):
        EvaluateConfig(**bad.model_dump(), sample_sise=3)
    with pytest.raises(ValidationError):
        EvaluateConfig(**{**bad.model_dump(), "precision": "8"})


def test_bad_test_split_names_the_problem(
    tiny_llama_dir: Path, llama_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "test_messages.jsonl").write_text("")
    pq.write_table(pa.table({"input_ids": [[1, 2, 3]]}), data / "test.parquet")
    with pytest.raises(DatasetInvalid, match="lacks column"):
        run_evaluate(cfg(tiny_llama_dir, data, tmp_path / "o"))
    pq.write_table(
        pa.table({"input_ids": [[1, 2, 3]], "labels": [[-100, -100, -100]]}), data / "test.parquet"
    )
    with pytest.raises(DatasetInvalid, match="no label tokens"):
        run_evaluate(cfg(tiny_llama_dir, data, tmp_path / "o"))


def test_long_prompts_keep_their_last_tokens(tiny_llama_dir: Path) -> None:
    """max_prompt_tokens cuts prompts from the left: generation sees at most that many."""
    tok = load_tokenizer(tiny_llama_dir)
    long_prompt = [{"role": "user", "content": "Hello, how are you doing today? " * 20}]
    [full] = prompt_ids(tok, [long_prompt])
    [cut] = prompt_ids(tok, [long_prompt], max_prompt_tokens=12)
    assert len(full) > 12 and cut == full[-12:]  # cut from the left: the generation prompt kept
    assert tok.decode(cut).endswith("<|im_start|>assistant\n")
    model, _ = load_model(
        checkpoint(tiny_llama_dir), device=torch.device("cpu"), dtype=torch.float32
    )
    replies = generate_replies(model, tok, [cut], 4, 1)
    assert isinstance(replies[0], str)


def test_reusable_prefixes_take_the_longest_matching_prompts_within_the_budget(
    tiny_llama_dir: Path, monkeypatch
) -> None:
    """A prompt reuses its row's tokens but its last, when it starts with enough of them;
    the longest go first while their keys and values fit the budget."""
    from chattune.evaluate import replies

    model, _ = load_model(
        checkpoint(tiny_llama_dir), device=torch.device("cpu"), dtype=torch.float32
    )
    monkeypatch.setattr(replies, "MIN_REUSED_TOKENS", 4)
    per_token = replies.kv_bytes_per_token(model)
    cfg = model.config
    assert (
        per_token
        == cfg.num_hidden_layers
        * 2
        * cfg.num_key_value_heads
        * (cfg.hidden_size // cfg.num_attention_heads)
        * 4
    )
    rows = [(list(range(20)), [0] * 20), (list(range(10)), [0] * 10), (list(range(30)), [0] * 30)]
    prompts = {
        0: list(range(12)),  # a prefix of row 0: reuses 11 tokens
        1: [*range(10), 99],  # the whole row then the generation prompt: 10
        2: [7, *range(1, 30)],  # differs at the first token: nothing
        5: list(range(12)),  # no such row
    }
    assert replies.reusable_prefixes(model, rows, prompts) == {0: 11, 1: 10}
    # room for 11 tokens only: the longer one
    assert replies.reusable_prefixes(model, rows, prompts, 11 * per_token) == {0: 11}
    assert replies.reusable_prefixes(model, rows, prompts, 10 * per_token) == {1: 10}
    monkeypatch.setattr(replies, "MIN_REUSED_TOKENS", 11)
    assert replies.reusable_prefixes(model, rows, prompts) == {0: 11}
