"""The evaluate step: perplexity on the tokenized test split, BLEU/ROUGE on generated replies.

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
  definitions (Azure ML's, via `sacrebleu` and `rouge-score`) are in `chattune.train.metrics`.

Example:
    >>> cfg = EvaluateConfig(model_dir=Path("out/model"), test_tokenized=Path("pre/test.parquet"),
    ...                      test_messages=Path("pre/test_messages.jsonl"), output_dir=Path("ev"))
    >>> run_evaluate(cfg, print)["perplexity"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chattune.errors import DatasetInvalid, InvalidParameter
from chattune.train.metrics import generation_metrics

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Log = Callable[[str], None]
IGNORE_INDEX = -100  # label of tokens that are not trained on (transformers' convention)


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
    batch_size: int = Field(
        8, ge=1, description="Sequences per forward pass; lower it if memory runs out."
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
        log: called with a line of progress ("perplexity 3/10 batches", "generated 16/50").

    Returns:
        `eval_loss` and `perplexity`, plus `bleu_1..bleu_4`, `rouge1`, `rouge2`, `rougeL`,
        `rougeLsum` when `sample_size` > 0 and some test conversation has an assistant
        message.

    Raises:
        InvalidParameter: a path in `cfg` is missing, or the tokenizer has no chat template.
        DatasetInvalid: the test files lack a column, a row, or any label token.
    """
    import torch
    from transformers import set_seed

    _check_paths(cfg)
    set_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(cfg.precision, device)

    rows = read_tokenized(cfg.test_tokenized)
    conversations = read_conversations(cfg.test_messages) if cfg.sample_size else []
    tokenizer = load_tokenizer(cfg.model_dir, cfg.adapter_dir)
    log(
        f"loading {cfg.model_dir}" + (f" with adapter {cfg.adapter_dir}" if cfg.adapter_dir else "")
    )
    model = load_model(cfg.model_dir, cfg.adapter_dir, dtype, device)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loss, n_tokens = token_nll(model, rows, cfg.batch_size, pad_id, log)
    metrics = {"eval_loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}
    log(f"eval_loss {loss:.4f}, perplexity {metrics['perplexity']:.4f} over {n_tokens} tokens")

    records: list[dict[str, Any]] = []
    if cfg.sample_size:
        samples = last_turn_samples(conversations, cfg.sample_size)
        if not samples:
            log("no test conversation has an assistant message: BLEU/ROUGE skipped")
        else:
            prompts = [p for _, p, _ in samples]
            predictions = generate_replies(
                model,
                tokenizer,
                prompts,
                cfg.max_new_tokens,
                cfg.batch_size,
                log,
                max_prompt_tokens=cfg.max_prompt_tokens,
            )
            references = [r for _, _, r in samples]
            metrics.update(generation_metrics(predictions, references))
            records = [
                {"index": i, "prompt": p, "reference": r, "prediction": pred}
                for (i, p, r), pred in zip(samples, predictions, strict=True)
            ]

    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(
        cfg.output_dir / "predictions.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
    )
    _write_atomic(cfg.output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log(f"wrote {cfg.output_dir / 'metrics.json'}")
    return metrics


# -- inputs ------------------------------------------------------------------------------------


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


def read_tokenized(path: Path) -> list[tuple[list[int], list[int]]]:
    """The (input_ids, labels) rows of a tokenized split written by the preprocess step.

    Raises:
        DatasetInvalid: a column is missing, a row's lists differ in length, or no row has
            a label token to score.
    """
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in ("input_ids", "labels") if c not in names]
    if missing:
        raise DatasetInvalid(
            f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(names)}).",
            fix="run the preprocess step again to write input_ids and labels.",
        )
    table = pq.read_table(path, columns=["input_ids", "labels"])
    ids, labels = table.column("input_ids").to_pylist(), table.column("labels").to_pylist()
    rows = []
    for i, (a, b) in enumerate(zip(ids, labels, strict=True)):
        if a is None or b is None or len(a) != len(b):
            raise DatasetInvalid(
                f"{path} row {i}: input_ids and labels differ in length or are missing.",
                fix="run the preprocess step again.",
            )
        rows.append((list(a), list(b)))
    if not any(lab != IGNORE_INDEX for _, labels_ in rows for lab in labels_[1:]):
        raise DatasetInvalid(
            f"{path} has no label tokens (every label is {IGNORE_INDEX}): nothing to score.",
            fix="check that the test conversations have assistant replies and that "
            "`max_seq_length` leaves room for them.",
        )
    return rows


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """The `messages` of each line of a `test_messages.jsonl` file.

    Raises:
        DatasetInvalid: a line is not JSON or has no `messages` list.
    """
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError):
                messages = None
            if not isinstance(messages, list):
                raise DatasetInvalid(
                    f"{path} line {n} is not a JSON object with a `messages` list.",
                    fix="run the preprocess step again.",
                )
            out.append(messages)
    return out


def last_turn_samples(
    conversations: Sequence[list[dict[str, str]]], sample_size: int
) -> list[tuple[int, list[dict[str, str]], str]]:
    """(index, prompt messages, reference) for the first `sample_size` usable conversations.

    The reference is the content of the conversation's last assistant message and the prompt
    the messages before it; conversations with no assistant message, or with nothing before
    it, are skipped.
    """
    out = []
    for i, messages in enumerate(conversations):
        last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
        if last == 0:
            continue
        out.append((i, messages[:last], str(messages[last].get("content") or "")))
        if len(out) == sample_size:
            break
    return out


# -- model -----------------------------------------------------------------------------------


def torch_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of a pipeline `precision`: "16" is fp16 on GPUs and bf16 on CPUs."""
    import torch

    if precision == "32":
        return torch.float32
    if precision == "16" and device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        from chattune.host.machine import cpu_bf16_supported

        if not cpu_bf16_supported():  # emulated bf16 is ~500x slower than fp32 here
            return torch.float32
    return torch.bfloat16  # "bf16", or "16" on a CPU (fp16 matmuls there are slow or missing)


def load_tokenizer(model_dir: Path, adapter_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the adapter if there is one there, else the model's.

    Raises:
        InvalidParameter: the tokenizer has no chat template.
    """
    from transformers import AutoTokenizer

    src = model_dir
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        src = adapter_dir
    tokenizer = AutoTokenizer.from_pretrained(src)
    if not tokenizer.chat_template:
        raise InvalidParameter(
            f"the tokenizer in {src} has no chat template.",
            fix="import the base model with a chat template (`chat_template` of the model "
            "import step) and fine-tune it again.",
        )
    return tokenizer


def load_model(
    model_dir: Path, adapter_dir: Path | None, dtype: torch.dtype, device: torch.device
) -> PreTrainedModel:
    """The model in eval mode on `device`, with the LoRA adapter applied (not merged)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.to(device).eval()


# -- perplexity ------------------------------------------------------------------------------


def token_nll(
    model: PreTrainedModel,
    rows: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    pad_token_id: int,
    log: Log = lambda _msg: None,
) -> tuple[float, int]:
    """Mean NLL per label token over `rows`, and the number of label tokens.

    Token t's label is scored from the logits at position t-1 (as transformers' causal LM
    loss does), in float32 whatever the model's dtype. Rows are batched by length (right
    padding, attention mask) so that padding stays small; the sum does not depend on it.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]), reverse=True)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    total, count = 0.0, 0
    for b, batch in enumerate(batches, 1):
        width = len(rows[batch[0]][0])
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            n = len(rows[i][0])
            ids[r, :n] = torch.tensor(rows[i][0])
            labels[r, :n] = torch.tensor(rows[i][1])
            mask[r, :n] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = labels[:, 1:].to(device)  # (B, T-1): the token each position predicts
        keep = targets != IGNORE_INDEX
        picked = logits[:, :-1][keep].float()  # (N, V), only the scored positions upcast
        total += F.cross_entropy(picked, targets[keep], reduction="sum").item()
        count += int(keep.sum())
        log(f"perplexity {b}/{len(batches)} batches")
    return total / count, count


# -- generation ------------------------------------------------------------------------------


def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int,
    batch_size: int,
    log: Log = lambda _msg: None,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """The model's greedy reply to each conversation, generated `batch_size` at a time.

    Each prompt is rendered with the chat template and `add_generation_prompt=True`, then
    tokenized without adding special tokens (the template has them). Batches are left-padded
    so that every row's next token follows its own last token. Generation stops at the
    tokenizer's end-of-sequence token or any of the model's `generation_config.eos_token_id`
    (e.g. Phi-3's `<|end|>`); the reply is the decoded text before it, special tokens
    removed, stripped of surrounding whitespace.
    """
    import torch
    from transformers import GenerationConfig

    tokenizer.padding_side = "left"
    # a long conversation keeps its end: the turns right before the reply matter most, and
    # an untruncated 3k-token prompt costs minutes and GBs on a CPU
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_ids = _eos_ids(model, tokenizer)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    device = next(model.parameters()).device
    texts = [
        tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    replies: list[str] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            add_special_tokens=False,
            padding=True,
            truncation=max_prompt_tokens is not None,
            max_length=max_prompt_tokens,
            return_tensors="pt",
        ).to(device)
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=gen_cfg)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            stop = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
            replies.append(tokenizer.decode(row[:stop], skip_special_tokens=True).strip())
        log(f"generated {len(replies)}/{len(texts)}")
    return replies


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: list[int] = []
    cfg_eos = getattr(model.generation_config, "eos_token_id", None)
    for v in (tokenizer.eos_token_id, *(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos])):
        if v is not None and v not in ids:
            ids.append(int(v))
    return ids


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
