"""`chattune data show`: a preview of a dataset file and statistics of its rows.

Rows are streamed; with a tokenizer, each valid row is rendered with the model's chat
template (`apply_chat_template(messages, tokenize=False)`) and the texts are tokenized
in batches, keeping only one integer (the length) per row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chattune.data.validate import CheckedRow, iter_checked

PREVIEW_CHARS = 80
TOKENIZE_BATCH = 256
_NO_LIMIT = 10**9  # transformers uses ~1e30 for "model_max_length not set"


@dataclass(frozen=True)
class PreviewRow:
    """One row as `show` lists it.

    Args:
        line: 1-based line in the file.
        roles: the role of each message, in order (empty when unreadable).
        first_user: the first user message, or the row's problem when it has one.
        last_assistant: the last assistant message, `""` if none.
        problem: why the row is invalid, None when valid.
    """

    line: int
    roles: list[str]
    first_user: str
    last_assistant: str
    problem: str | None = None


@dataclass
class TokenStats:
    """Token lengths of the rendered rows.

    Args:
        count: rows measured.
        min, mean, p50, p90, p99, max: length statistics, in tokens.
        context: the model's context length (tokens), None when unknown.
        over_context: rows longer than `context`.
        template_errors: valid rows the chat template refused to render.
    """

    count: int
    min: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: int
    context: int | None
    over_context: int
    template_errors: int = 0


@dataclass
class DatasetStats:
    """What `dataset_stats` measured.

    Args:
        path: the file.
        rows: rows read.
        valid: rows that pass the schema (the turn and token statistics are over these).
        formats: rows per detected format.
        turns_min, turns_mean, turns_max: messages per valid row.
        preview: the first rows.
        tokens: token statistics when a tokenizer was given and a row could be measured.
    """

    path: Path
    rows: int = 0
    valid: int = 0
    formats: Counter[str] = field(default_factory=Counter)
    turns_min: int = 0
    turns_mean: float = 0.0
    turns_max: int = 0
    preview: list[PreviewRow] = field(default_factory=list)
    tokens: TokenStats | None = None

    @property
    def invalid(self) -> int:
        return self.rows - self.valid

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what `chattune data show --json` prints)."""
        return {
            "path": str(self.path),
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "formats": dict(self.formats),
            "turns": {"min": self.turns_min, "mean": self.turns_mean, "max": self.turns_max},
            "preview": [asdict(p) for p in self.preview],
            "tokens": asdict(self.tokens) if self.tokens else None,
        }


def model_context(tokenizer: Any) -> int | None:
    """The context length of a tokenizer's model: `model_max_length` when set, else the
    `max_position_embeddings` of the config next to the tokenizer, else None."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT:
        return limit
    source = getattr(tokenizer, "name_or_path", "")
    if source and Path(source).is_dir():
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source)
        except Exception:  # no config.json, or one transformers cannot read: unknown
            return None
        value = getattr(config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None
    return None


def preview_row(checked: CheckedRow, width: int = PREVIEW_CHARS) -> PreviewRow:
    """Summarise one checked row for the preview table."""
    problem = _shorten(str(checked.problem), 2 * width) if checked.problem else None
    messages = checked.row["messages"] if checked.row else []
    good = [m for m in messages if isinstance(m, dict)]
    roles = [str(m.get("role")) for m in good]
    first_user = next((m.get("content") for m in good if m.get("role") == "user"), "")
    last_assistant = next(
        (m.get("content") for m in reversed(good) if m.get("role") == "assistant"), ""
    )
    return PreviewRow(
        checked.line,
        roles,
        _shorten(str(first_user or ""), width),
        _shorten(str(last_assistant or ""), width),
        problem,
    )


def dataset_stats(
    path: Path,
    *,
    preview_rows: int = 5,
    tokenizer: Any = None,
    context: int | None = None,
    batch_size: int = TOKENIZE_BATCH,
) -> DatasetStats:
    """Read a dataset file once and measure it.

    Args:
        path: a `.jsonl`, `.json`, `.csv` or `.parquet` file in any known format.
        preview_rows: how many of the first rows to keep for display.
        tokenizer: a transformers tokenizer with a chat template; None skips token
            statistics.
        context: the context length to compare to; default `model_context(tokenizer)`.
        batch_size: rows rendered and tokenized at a time.

    Returns:
        `DatasetStats`.

    Raises:
        DatasetError: the file is missing or cannot be opened.
    """
    stats = DatasetStats(Path(path))
    turns: list[int] = []
    lengths: list[int] = []
    batch: list[str] = []
    template_errors = 0
    for checked in iter_checked(path):
        stats.rows += 1
        if checked.format:
            stats.formats[checked.format] += 1
        if len(stats.preview) < preview_rows:
            stats.preview.append(preview_row(checked))
        if not checked.ok or checked.row is None:
            continue
        stats.valid += 1
        messages = checked.row["messages"]
        turns.append(len(messages))
        if tokenizer is None:
            continue
        try:
            batch.append(tokenizer.apply_chat_template(messages, tokenize=False))
        except Exception:  # a template may raise on a role order it does not support
            template_errors += 1
        if len(batch) >= batch_size:
            lengths.extend(_token_lengths(tokenizer, batch))
            batch = []
    if batch:
        lengths.extend(_token_lengths(tokenizer, batch))
    if turns:
        stats.turns_min, stats.turns_max = min(turns), max(turns)
        stats.turns_mean = sum(turns) / len(turns)
    if tokenizer is not None and (lengths or template_errors):
        ctx = context if context is not None else model_context(tokenizer)
        stats.tokens = token_stats(lengths, ctx, template_errors)
    return stats


def token_stats(lengths: list[int], context: int | None, template_errors: int = 0) -> TokenStats:
    """Summarise token lengths (percentiles by linear interpolation, as numpy's default)."""
    if not lengths:
        return TokenStats(0, 0, 0.0, 0.0, 0.0, 0.0, 0, context, 0, template_errors)
    arr = np.asarray(lengths, dtype=np.int64)
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    over = int((arr > context).sum()) if context else 0
    return TokenStats(
        count=len(arr),
        min=int(arr.min()),
        mean=float(arr.mean()),
        p50=p50,
        p90=p90,
        p99=p99,
        max=int(arr.max()),
        context=context,
        over_context=over,
        template_errors=template_errors,
    )


def _token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    # The template already holds the special tokens (BOS, turn markers): add none.
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(x) for x in ids]


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
