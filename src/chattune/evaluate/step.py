"""The evaluate step: perplexity on the tokenized test split, BLEU/ROUGE on generated replies.

Both passes take the project's fast paths: perplexity the finetune step's packed forward
(`evaluate.perplexity`), replies the serving engine's continuous batching (`evaluate.replies`).

Reads what the preprocess step wrote (`test.parquet`: `input_ids`, `labels` with -100 on
tokens that are not trained on; `test_messages.jsonl`: the raw test conversations) and the
model the finetune step wrote (a full model folder, or a base folder plus a LoRA adapter).

Metrics (all floats, written to `output_dir/metrics.json`):

- `eval_loss`: mean negative log-likelihood (nats) per label token over the whole test
  split: the sum over every labelled token (label != -100, predicted from the tokens before
  it, as in training) divided by the number of such tokens. Token-weighted, so a long reply
  counts more than a short one.
- `perplexity`: `exp(eval_loss)`.
- `bleu_1`..`bleu_4`, `rouge1`, `rouge2`, `rougeL`, `rougeLsum`: for the first `sample_size`
  test conversations that have an assistant message, the prompt is the conversation up to
  (not including) its last assistant message, rendered with the tokenizer's chat template
  and `add_generation_prompt=True`; the model's greedy reply (at most `max_new_tokens`,
  stopped at an end-of-sequence token) is compared with that last assistant message. The
  definitions (Azure ML's, via `sacrebleu` and `rouge-score`) are in `chattune.evaluate.metrics`.

Example:
    >>> cfg = EvaluateConfig(model_dir=Path("out/model"), test_tokenized=Path("pre/test.parquet"),
    ...                      test_messages=Path("pre/test_messages.jsonl"), output_dir=Path("ev"))
    >>> run_evaluate(cfg, print)["perplexity"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import set_seed

from chattune.errors import InvalidParameter
from chattune.evaluate.inputs import last_turn_samples, read_conversations, read_tokenized
from chattune.evaluate.metrics import generation_metrics
from chattune.evaluate.perplexity import PACKED_TOKENS, token_nll
from chattune.evaluate.replies import generate_replies, prompt_ids, reusable_prefixes
from chattune.models.checkpoint import checkpoint
from chattune.models.loading import compute_dtype, load_model, load_tokenizer
from chattune.workspace.files import write_atomic, write_json_atomic

Log = Callable[[str], None]


class EvaluateConfig(BaseModel):
    """Everything the evaluate step reads and writes."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(description="A full model folder (HF format), or the LoRA base.")
    adapter_dir: Path | None = Field(None, description="A PEFT LoRA adapter on `model_dir`.")
    test_tokenized: Path = Field(description="`test.parquet` with `input_ids` and `labels`.")
    test_messages: Path = Field(description="`test_messages.jsonl`: `{'messages': [...]}`.")
    output_dir: Path = Field(description="Gets `metrics.json` and `predictions.jsonl`.")
    sample_size: int = Field(
        50, ge=0, description="Conversations generated for BLEU/ROUGE; 0 = skip them."
    )
    max_new_tokens: int = Field(64, ge=1, description="Longest generated reply, in tokens.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Prompts longer than this keep their last tokens (None: all)."
    )
    batch_size: int = Field(8, ge=1, description="Most replies decoded together.")
    packed_tokens: int = Field(
        PACKED_TOKENS,
        ge=1,
        description="Most tokens per packed perplexity forward (a longer conversation goes "
        "alone); lower it if memory runs out.",
    )
    precision: Literal["32", "16", "bf16"] = Field(
        "32", description='"32" fp32; "16" fp16 on GPUs (bf16 on CPUs); "bf16" bfloat16.'
    )
    seed: int = 42

    @field_validator("precision", mode="before")
    @classmethod
    def _int_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def run_evaluate(cfg: EvaluateConfig, log: Log = lambda _msg: None) -> dict[str, float]:
    """Compute the test metrics of a model and write them with the sampled predictions.

    Writes (each atomically: a temporary file renamed into place)
    `output_dir/metrics.json` (the returned dict) and `output_dir/predictions.jsonl`, one
    line per generated conversation: `{"index": row in test_messages.jsonl, "prompt":
    [messages before the last assistant message], "reference": str, "prediction": str}`
    (empty when `sample_size` is 0).

    Args:
        cfg: what to evaluate and where to write.
        log: called with a line of progress ("perplexity 3/10 packed rows", "generated 16/50").

    Returns:
        `eval_loss` and `perplexity`, plus `bleu_1..bleu_4`, `rouge1`, `rouge2`, `rougeL`,
        `rougeLsum` when `sample_size` > 0 and some test conversation has an assistant
        message.

    Raises:
        InvalidParameter: a path in `cfg` is missing, or the tokenizer has no chat template.
        DatasetInvalid: the test files lack a column, a row, or any label token.
    """
    _check_paths(cfg)
    set_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = read_tokenized(cfg.test_tokenized)
    conversations = read_conversations(cfg.test_messages) if cfg.sample_size else []
    ckpt = checkpoint(cfg.model_dir, cfg.adapter_dir)
    tokenizer = load_tokenizer(ckpt)
    log(
        f"loading {cfg.model_dir}" + (f" with adapter {cfg.adapter_dir}" if cfg.adapter_dir else "")
    )
    # the adapter merged: LoRA's extra products and its fp32 casts in every linear layer
    # took a fifth of the perplexity pass (SmolLM2, bf16); the metrics agree within 1e-3
    model, adapters = load_model(
        ckpt, device=device, dtype=compute_dtype(cfg.precision, device), merge=True
    )

    records: list[dict[str, Any]] = []
    samples = last_turn_samples(conversations, cfg.sample_size)
    if cfg.sample_size and not samples:
        log("no test conversation has an assistant message: BLEU/ROUGE skipped")
    prompts = prompt_ids(tokenizer, [p for _, p, _ in samples], cfg.max_prompt_tokens)
    # test_messages.jsonl line i is test.parquet row i (preprocess writes both per test row);
    # `reusable_prefixes` checks the tokens anyway
    by_row = {i: x for (i, _, _), x in zip(samples, prompts, strict=True)}
    keep = reusable_prefixes(model, rows, by_row)

    loss, n_tokens, prefixes = token_nll(model, rows, cfg.packed_tokens, log, keep_prefix=keep)
    metrics = {"eval_loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}
    log(f"eval_loss {loss:.4f}, perplexity {metrics['perplexity']:.4f} over {n_tokens} tokens")

    if samples:
        if prefixes:
            reused = sum(c.get_seq_length() for c in prefixes.values())
            log(
                f"{reused} prompt tokens of {len(prefixes)} replies reused from the perplexity pass"
            )
        predictions = generate_replies(
            model,
            tokenizer,
            prompts,
            cfg.max_new_tokens,
            cfg.batch_size,
            log,
            adapters=adapters,
            prefixes=[prefixes.pop(i, None) for i, _, _ in samples],
        )
        metrics.update(generation_metrics(predictions, [r for _, _, r in samples]))
        records = [
            {"index": i, "prompt": p, "reference": r, "prediction": pred}
            for (i, p, r), pred in zip(samples, predictions, strict=True)
        ]

    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(
        cfg.output_dir / "predictions.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
    )
    write_json_atomic(cfg.output_dir / "metrics.json", metrics)
    log(f"wrote {cfg.output_dir / 'metrics.json'}")
    return metrics


def _check_paths(cfg: EvaluateConfig) -> None:
    """Report every missing input at once, each by its field."""
    problems = []
    if not (cfg.model_dir / "config.json").is_file():
        problems.append(f"`model_dir` {cfg.model_dir} has no config.json")
    if cfg.adapter_dir is not None and not (cfg.adapter_dir / "adapter_config.json").is_file():
        problems.append(f"`adapter_dir` {cfg.adapter_dir} has no adapter_config.json")
    if not cfg.test_tokenized.is_file():
        problems.append(f"`test_tokenized` {cfg.test_tokenized} does not exist")
    if cfg.sample_size and not cfg.test_messages.is_file():
        problems.append(f"`test_messages` {cfg.test_messages} does not exist")
    if problems:
        raise InvalidParameter(
            "cannot evaluate: " + "; ".join(problems) + ".",
            fix="point the fields named above at the outputs of the finetune and preprocess "
            "steps (or set `sample_size` to 0 to skip generation).",
        )
