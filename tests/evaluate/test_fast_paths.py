"""The evaluate step on its fast paths gives the metrics of the padded path it replaced.

`padded_token_nll` and `padded_replies` are the old implementation (train/evaluate.py at
7a93d4f), kept here as the reference: right-padded batches with an attention mask and logits
at every position for perplexity; `model.generate` on left-padded batches for the replies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from chattune.evaluate import replies as replies_mod
from chattune.evaluate.inputs import last_turn_samples, read_conversations, read_tokenized
from chattune.evaluate.metrics import generation_metrics
from chattune.evaluate.perplexity import token_nll
from chattune.evaluate.step import EvaluateConfig, run_evaluate
from chattune.models.checkpoint import checkpoint
from chattune.models.loading import load_model

from .test_step import CONVERSATIONS, write_test_split

IGNORE = -100
MORE = [  # longer conversations: packed rows hold several, padded batches pad a lot
    [
        {"role": "user", "content": "Tell me about the weather in the park. " * 4},
        {"role": "assistant", "content": "The weather is nice and sunny in the park."},
        {"role": "user", "content": "And numbers?"},
        {"role": "assistant", "content": "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how are you doing today?"},
    ],
]


def padded_token_nll(model, rows, batch_size: int, pad_id: int) -> tuple[float, int]:
    """The old perplexity: rows batched longest first, right-padded, fp32 logits everywhere."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]), reverse=True)
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = len(rows[batch[0]][0])
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            n = len(rows[i][0])
            ids[r, :n], labels[r, :n], mask[r, :n] = (
                torch.tensor(rows[i][0]),
                torch.tensor(rows[i][1]),
                1,
            )
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        targets = labels[:, 1:]
        keep = targets != IGNORE
        total += F.cross_entropy(
            logits[:, :-1][keep].float(), targets[keep], reduction="sum"
        ).item()
        count += int(keep.sum())
    return total / count, count


def padded_replies(model, tok, prompts, max_new_tokens: int, batch_size: int) -> list[str]:
    """The old replies: `generate` on left-padded batches, greedy, stopped at eos."""
    tok.padding_side = "left"
    cfg_eos = model.generation_config.eos_token_id
    eos = sorted(
        {tok.eos_token_id, *(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos])} - {None}
    )
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )
    texts = [
        tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    replies = []
    for start in range(0, len(texts), batch_size):
        enc = tok(texts[start : start + batch_size], add_special_tokens=False, padding=True,
                  return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=gen)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            stop = next((k for k, t in enumerate(row) if t in eos), len(row))
            replies.append(tok.decode(row[:stop], skip_special_tokens=True).strip())
    return replies


def padded_metrics(model_dir: Path, adapter: Path | None, data: Path, n: int, tokens: int):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    loss, _ = padded_token_nll(model, read_tokenized(data / "test.parquet"), 8, tok.pad_token_id)
    samples = last_turn_samples(read_conversations(data / "test_messages.jsonl"), n)
    replies = padded_replies(model, tok, [p for _, p, _ in samples], tokens, 8)
    return {
        "eval_loss": loss,
        "perplexity": math.exp(loss),
        **generation_metrics(replies, [r for _, _, r in samples]),
    }, replies


@pytest.fixture(scope="module")
def chatty_data(chatty_llama_dir: Path, tmp_path_factory) -> Path:
    return write_test_split(
        chatty_llama_dir, tmp_path_factory.mktemp("chatty-data"), CONVERSATIONS + MORE
    )


@pytest.mark.parametrize(("adapter", "reuse"), [(None, False), ("a1", False), ("a1", True)])
def test_fast_paths_give_the_padded_paths_metrics(
    chatty_llama_dir: Path,
    llama_adapters: dict,
    chatty_data: Path,
    tmp_path: Path,
    adapter,
    reuse: bool,
    monkeypatch,
) -> None:
    """reuse: the replies' prompts start from the perplexity pass's keys and values (every
    prompt qualifies, however short): the same replies, token for token."""
    monkeypatch.setattr(replies_mod, "MIN_REUSED_TOKENS", 1 if reuse else 10**9)
    adapter_dir = llama_adapters[adapter] if adapter else None
    want, replies = padded_metrics(chatty_llama_dir, adapter_dir, chatty_data, 6, 24)
    lines: list[str] = []
    assert len({len(r) for r in replies}) > 1, "replies of one length: no padding to handle"
    got = run_evaluate(
        EvaluateConfig(
            model_dir=chatty_llama_dir,
            adapter_dir=adapter_dir,
            test_tokenized=chatty_data / "test.parquet",
            test_messages=chatty_data / "test_messages.jsonl",
            output_dir=tmp_path,
            sample_size=6,
            max_new_tokens=24,
            packed_tokens=64,  # several packed rows, several conversations in some
        ),
        lines.append,
    )
    assert any("reused from the perplexity pass" in x for x in lines) == reuse, lines
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-3), key
    # the replies themselves are the same text, not just scores that happen to agree
    predictions = [json.loads(x)["prediction"] for x in (tmp_path / "predictions.jsonl").open()]
    assert predictions == replies and all(replies)


def test_packed_perplexity_is_the_padded_one_in_bf16(chatty_llama_dir: Path, chatty_data: Path):
    """bf16 weights, logits upcast per chunk: close to the padded path in the same dtype."""
    rows = read_tokenized(chatty_data / "test.parquet")
    plain = AutoModelForCausalLM.from_pretrained(chatty_llama_dir, dtype=torch.bfloat16).eval()
    want, n = padded_token_nll(plain, rows, 8, 0)
    model, _ = load_model(
        checkpoint(chatty_llama_dir), device=torch.device("cpu"), dtype=torch.bfloat16
    )
    got, m, _ = token_nll(model, rows, max_tokens=64)
    assert m == n
    assert got == pytest.approx(want, rel=2e-2)
    assert model.config._attn_implementation == "sdpa"  # restored after the packed forward
