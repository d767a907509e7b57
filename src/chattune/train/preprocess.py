"""The preprocess step: conversation files in, tokenized splits with assistant-only labels out.

    train_file [validation_file] [test_file] + model_dir (tokenizer with a chat template)
      -> output_dir/{train,validation,test}.parquet, test_messages.jsonl, report.json

Only `messages` is used (rows in ShareGPT or Alpaca form are converted first, by
`chattune.data`). Splits keep file order and are cut contiguously, as in Azure:

| files given                | train       | validation         | test                     |
| -------------------------- | ----------- | ------------------ | ------------------------ |
| train                      | first 80%   | next 10%           | last 10%                 |
| train + test               | first 80%   | last 20% of train  | test_file                |
| train + validation         | train_file  | validation_file    | validation_file (logged) |
| train + validation + test  | as given    | as given           | as given                 |

Percentages are of the rows that pass the schema. Rows that break the conversation schema
(`chattune.data.schema`) and rows that lose every assistant token to truncation are dropped
and reported by reason, with file and line (Azure drops them silently).

Labels are -100 except on assistant messages: their content and the end-of-turn token(s) the
template writes after it (`<|im_end|>`, `<|end|>`, `<|eot_id|>`), so the model learns to stop.
`ChatEncoder` says how the spans are found.

Example:
    >>> cfg = PreprocessConfig(train_file="d/train_sft.jsonl", test_file="d/test_sft.jsonl",
    ...                        model_dir="models/smol", max_seq_length=-1, output_dir="out")
    >>> report = run_preprocess(cfg, print)  # logs reads, drops, splits, outputs
    >>> report.metrics()["train_rows"], report.dropped.keys()
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from chattune.data import schema
from chattune.data.readers import SUFFIXES
from chattune.data.validate import iter_checked
from chattune.errors import DatasetInvalid, InvalidParameter

Log = Callable[[str], None]
Messages = list[dict[str, Any]]
T = TypeVar("T")

FORMAT_VERSION = 1  # bump when the output changes for the same inputs: it is in the cache key
IGNORE_INDEX = -100
MIN_TRAIN_ROWS = 10
MAX_EXAMPLES = 5
SPLITS = ("train", "validation", "test")
_CHUNK = 1024  # conversations rendered and tokenized per batch (tokenized in parallel)
# With a token limit, a conversation is tokenized up to a turn boundary at least this many
# characters per token of the limit into it (see `ChatEncoder.encode_stream`): English text runs
# about 4.4 characters per BPE token, so the prefix nearly always holds the limit; when it
# does not, the whole text is tokenized.
_PREFIX_CHARS_PER_TOKEN = 5
_LOG_EVERY = 20_000  # conversations between progress lines

DROP_TRUNCATED = "no assistant tokens left after truncation"
DROP_NO_LABELS = "chat template wrote no assistant tokens"
# Stable metric names (`dropped_<slug>`) for the reasons of `chattune.data.schema`.
_SLUGS = {
    schema.INVALID_JSON: "invalid_json",
    schema.NOT_OBJECT: "not_object",
    schema.MISSING_MESSAGES: "missing_messages",
    schema.EMPTY_MESSAGES: "empty_messages",
    schema.MESSAGES_NOT_LIST: "messages_not_list",
    schema.MESSAGE_NOT_OBJECT: "message_not_object",
    schema.BAD_ROLE: "bad_role",
    schema.BAD_CONTENT: "bad_content",
    schema.SYSTEM_NOT_FIRST: "system_not_first",
    schema.FIRST_NOT_USER: "first_not_user",
    schema.NOT_ALTERNATING: "not_alternating",
    schema.NO_ASSISTANT: "no_assistant",
    schema.TOO_FEW_MESSAGES: "too_few_messages",
    DROP_TRUNCATED: "truncated_no_assistant",
    DROP_NO_LABELS: "template_no_assistant",
}
_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|chat_template.*|special_tokens_map\.json|added_tokens\.json|vocab\..*"
    r"|merges\.txt|.*\.model|.*\.tiktoken)$"
)


def reason_slug(reason: str) -> str:
    """The metric-safe name of a drop reason: `one message or fewer` -> `too_few_messages`."""
    return _SLUGS.get(reason) or re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")


class PreprocessConfig(BaseModel):
    """What the preprocess step reads and writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_file: Path = Field(description="Conversations to train on (.jsonl/.json/.csv/.parquet).")
    validation_file: Path | None = Field(None, description="None: cut from train_file.")
    test_file: Path | None = Field(None, description="None: cut from train_file (or = validation).")
    model_dir: Path = Field(description="HF model folder: tokenizer, chat template, config.json.")
    max_seq_length: int = Field(-1, description="Tokens kept per conversation; -1 = model context.")
    output_dir: Path = Field(description="Where the splits and report.json are written.")
    seed: int = Field(42, description="Recorded in the cache key; the cuts are contiguous.")

    @field_validator("max_seq_length")
    @classmethod
    def _positive_or_model(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("must be -1 (the model's context length) or a number of tokens >= 1")
        return v

    def inputs(self) -> dict[str, Path]:
        """The data files given, by parameter name (`train_file`, ...)."""
        files = {"train_file": self.train_file, "validation_file": self.validation_file}
        files["test_file"] = self.test_file
        return {k: Path(v) for k, v in files.items() if v is not None}


class ChatTemplateFailed(DatasetInvalid):
    """The chat template cannot render a conversation (or the tokenizer has none)."""


class TooFewTrainingRows(DatasetInvalid):
    """Fewer than `MIN_TRAIN_ROWS` training conversations are left."""


class NoAssistantTokens(DatasetInvalid):
    """No training conversation keeps an assistant token after truncation."""


# -- report ---------------------------------------------------------------------------------------
@dataclass
class DroppedExample:
    file: str
    line: int  # 1-based line in `file` (row number for parquet)
    detail: str


@dataclass
class DroppedRows:
    reason: str  # the human text, e.g. "one message or fewer"
    count: int = 0
    examples: list[DroppedExample] = field(default_factory=list)


@dataclass
class SplitStats:
    source: str  # where the rows come from: "train_file rows 1-80 of 100 valid"
    rows_in: int = 0  # rows assigned to the split (they passed the schema)
    rows_out: int = 0  # rows written
    tokens: int = 0
    label_tokens: int = 0
    truncated: int = 0  # rows written cut to max_seq_length


@dataclass
class PreprocessReport:
    """What `run_preprocess` did; mirrors `report.json`.

    Args:
        max_seq_length: the tokens kept per conversation (-1 resolved to the model's context).
        split_mode: which files were given: `train`, `train+test`, `train+validation`, ...
        rows_read: rows read per data file parameter (`train_file`, ...).
        splits: per split, rows in/out, tokens, label tokens, truncated rows.
        dropped: dropped rows by reason slug (see `reason_slug`), with the first examples.
        cache_key: `preprocess_cache_key` of the config.
        seconds: wall time of the step.
    """

    max_seq_length: int
    split_mode: str
    rows_read: dict[str, int]
    splits: dict[str, SplitStats]
    dropped: dict[str, DroppedRows]
    cache_key: str
    seconds: float = 0.0

    @property
    def truncated(self) -> int:
        return sum(s.truncated for s in self.splits.values())

    def metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: `train_rows`, `train_label_tokens`, `dropped_<reason>`..."""
        out: dict[str, float] = {"max_seq_length": float(self.max_seq_length)}
        for name, s in self.splits.items():
            out[f"{name}_rows"] = float(s.rows_out)
            out[f"{name}_tokens"] = float(s.tokens)
            out[f"{name}_label_tokens"] = float(s.label_tokens)
            out[f"{name}_truncated"] = float(s.truncated)
        out["truncated_rows"] = float(self.truncated)
        out["dropped_rows"] = float(sum(d.count for d in self.dropped.values()))
        for slug, d in self.dropped.items():
            out[f"dropped_{slug}"] = float(d.count)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "truncated": self.truncated, "format_version": FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessReport:
        dropped = {
            k: DroppedRows(v["reason"], v["count"], [DroppedExample(**e) for e in v["examples"]])
            for k, v in d["dropped"].items()
        }
        return cls(
            max_seq_length=d["max_seq_length"],
            split_mode=d["split_mode"],
            rows_read=d["rows_read"],
            splits={k: SplitStats(**v) for k, v in d["splits"].items()},
            dropped=dropped,
            cache_key=d["cache_key"],
            seconds=d.get("seconds", 0.0),
        )

    @classmethod
    def load(cls, output_dir: Path) -> PreprocessReport:
        """Read `output_dir/report.json` (present only when the step completed)."""
        return cls.from_dict(json.loads((Path(output_dir) / "report.json").read_text()))


class _Drops:
    def __init__(self) -> None:
        self.by_slug: dict[str, DroppedRows] = {}

    def add(self, reason: str, file: Path, line: int, detail: str) -> None:
        d = self.by_slug.setdefault(reason_slug(reason), DroppedRows(reason))
        d.count += 1
        if len(d.examples) < MAX_EXAMPLES:
            d.examples.append(DroppedExample(file.name, line, detail))

    def total(self) -> int:
        return sum(d.count for d in self.by_slug.values())

    def summary(self) -> str:
        return ", ".join(f"{d.count} {d.reason}" for d in self.by_slug.values()) or "none"


# -- labelling ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    """One conversation, tokenized, before truncation (with a `limit`, possibly only its
    first tokens: more than `limit` of them, with a label among the first `limit`)."""

    input_ids: list[int]
    labels: list[int]
    label_ranges: list[tuple[int, int]]  # token index ranges [a, b) that carry labels

    @property
    def first_label(self) -> int | None:
        return self.label_ranges[0][0] if self.label_ranges else None


class TemplateRenderError(Exception):
    """Conversation `index` of a batch failed to render; `error` is the template's exception,
    `payload` the batch's (see `ChatEncoder.encode_stream`)."""

    def __init__(self, index: int, error: Exception, payload: Any = None) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.index, self.error, self.payload = index, error, payload


@dataclass(frozen=True)
class _TurnPattern:
    head: str  # text from the end of the user's content to the start of the labels
    lead: str  # text from the start of the labels to the assistant's content ("" mostly)
    tail: str  # end-of-turn text after the content: "<|im_end|>", "<|end|>"


_PROBE = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello friend"},
    {"role": "user", "content": "Bye now"},
    {"role": "assistant", "content": "See you"},
]


class ChatEncoder:
    """Render conversations with a tokenizer's chat template; label the assistant tokens.

    The spans are found by rendering, for any template, not by parsing it. The exact way,
    per assistant message i: the render of `messages[:i]` with the generation prompt ends
    where the labels start; the render of `messages[:i+1]` agrees with the full render up to
    where the turn ends (for the last message, the render with a generation prompt is compared
    instead, as templates may append an eos after the last turn, as Phi-3's does). Character
    spans become tokens through the fast tokenizer's offsets (see `_offsets_range`): the
    tokens that end inside the span, less whitespace-only tokens at its end.

    That costs O(turns^2) renders, so a probe conversation labelled the exact way teaches the
    text the template writes around a reply (`_TurnPattern`), and each conversation is checked
    to hold exactly that text around each assistant content: 1 render per conversation. A
    conversation that fails the check (a template that trims contents, ...) is labelled the
    exact way.

    Args:
        tokenizer: a fast (Rust-backed) transformers tokenizer with a chat template.
        fast: use the probe-learned pattern when it holds (False: always the exact way).

    Raises:
        ChatTemplateFailed: the tokenizer is not fast or has no chat template.
    """

    def __init__(self, tokenizer: Any, *, fast: bool = True) -> None:
        from tokenizers import Tokenizer
        from transformers.utils.chat_template_utils import render_jinja_template

        if not getattr(tokenizer, "is_fast", False):
            raise ChatTemplateFailed(
                f"{type(tokenizer).__name__} is not a fast tokenizer: no offsets to label with.",
                fix="import the model with a tokenizer.json (fast tokenizer)",
            )
        try:
            self.template = tokenizer.get_chat_template()
        except ValueError as exc:
            raise ChatTemplateFailed(
                f"The tokenizer has no chat template ({exc}).",
                fix="import the model again with one: `chattune model import SOURCE "
                "--chat-template FILE`",
            ) from None
        self._render_batch = render_jinja_template
        self._kwargs = dict(tokenizer.special_tokens_map)
        # a private copy, so that truncation or padding set on the tokenizer cannot apply
        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._direct = self._direct_renderer() if fast else None
        self.pattern = self._learn_pattern() if fast else None
        self.boundary = self._learn_boundary() if fast else None
        self.exact_count = 0  # conversations labelled the exact (slow) way
        self.prefix_count = 0  # conversations tokenized only up to a turn boundary

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> str:
        rendered, _ = self._render_batch(
            [messages],
            chat_template=self.template,
            add_generation_prompt=add_generation_prompt,
            **self._kwargs,
        )
        return rendered[0]

    def encode(self, conversations: list[Messages], limit: int | None = None) -> list[Encoded]:
        """Tokenize and label a batch of conversations (see `encode_stream` for `limit`).

        Raises:
            TemplateRenderError: naming the index of the conversation that failed.
        """
        return next(self.encode_stream([(None, conversations)], limit))[1]

    def encode_stream(
        self, batches: Iterable[tuple[T, list[Messages]]], limit: int | None = None
    ) -> Iterator[tuple[T, list[Encoded]]]:
        """`encode` over `(payload, conversations)` batches, pipelined: the Rust tokenizer
        works on batch k+1 in a thread (it releases the GIL) while Python labels batch k and
        the caller writes it out.

        `limit`: only the first `limit` tokens will be kept. A long conversation is then
        tokenized only up to an occurrence of `boundary` (a special token that starts every
        turn, where the tokenizer splits the text: the tokens before it do not depend on what
        follows), when that prefix has more than `limit` tokens and a label among them;
        otherwise (and for every conversation that keeps no label) the whole text is.
        Truncated to `limit`, the result is the same either way.

        Raises:
            TemplateRenderError: its `payload` is the payload of the failing batch.
        """
        cut = bool(limit and self.boundary)
        with ThreadPoolExecutor(1, thread_name_prefix="tokenize") as pool:
            pending = None
            for payload, convs in batches:
                texts = self._render_all(convs, payload)
                inputs = [self._prefix(t, limit) for t in texts] if cut else texts
                job = pool.submit(self._backend.encode_batch, inputs, add_special_tokens=False)
                if pending:
                    yield pending[0], self._finish(*pending)
                pending = (payload, convs, texts, inputs, job, limit)
            if pending:
                yield pending[0], self._finish(*pending)

    def _prefix(self, text: str, limit: Any) -> str:
        at = text.find(self.boundary, limit * _PREFIX_CHARS_PER_TOKEN)  # type: ignore[arg-type]
        return text[:at] if at > 0 else text

    def _direct_renderer(self) -> Callable[[Messages], str] | None:
        """The compiled template itself, for conversations of plain strings (all of them in
        preprocess, through `_plain`): `render_jinja_template` rebuilds every message out of
        plain types (a third of its time) before calling the same compiled template with
        the same arguments. None when transformers has no such function, or when it renders
        the probe differently."""
        try:
            from transformers.utils.chat_template_utils import (
                _compile_jinja_template,
                _plain_template_data,
            )

            compiled = _compile_jinja_template(self.template)
            kwargs = _plain_template_data(self._kwargs)

            def render(messages: Messages) -> str:
                return compiled.render(
                    messages=messages,
                    tools=None,
                    documents=None,
                    add_generation_prompt=False,
                    **kwargs,
                )

            same = render(_PROBE) == self.render(_PROBE)
        except Exception:  # another transformers, or a template that rejects the probe
            return None
        return render if same else None

    def _render_all(self, convs: list[Messages], payload: Any) -> list[str]:
        try:
            if self._direct and all(map(_plain_strings, convs)):
                return list(map(self._direct, convs))
            return self._render_batch(convs, chat_template=self.template, **self._kwargs)[0]
        except Exception:  # jinja raises TemplateError, TypeError, ...: find the row
            for i, conv in enumerate(convs):
                try:
                    self.render(conv)
                except Exception as exc:
                    raise TemplateRenderError(i, exc, payload) from exc
            raise

    def _finish(
        self,
        payload: Any,
        convs: list[Messages],
        texts: list[str],
        inputs: list[str],
        job: Future,
        limit: int | None,
    ) -> list[Encoded]:
        out = []
        encodings = job.result()
        for i, (conv, text, enc) in enumerate(zip(convs, texts, encodings, strict=True)):
            spans = self._pattern_spans(conv, text) if self.pattern else None
            if spans is None:
                self.exact_count += 1
                try:
                    spans = self._exact_spans(conv, text)
                except Exception as exc:
                    raise TemplateRenderError(i, exc, payload) from exc
            cut = len(inputs[i])
            done = _label_prefix(enc, text, cut, spans, limit) if cut < len(text) else None
            if done is None:
                if cut < len(text):  # the prefix does not do: the whole text
                    enc = self._backend.encode(text, add_special_tokens=False)
                done = _label(enc, text, spans)
            else:
                self.prefix_count += 1
            out.append(done)
        return out

    def _exact_spans(self, messages: Messages, text: str) -> list[tuple[int, int]]:
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = _common_len(self.render(messages[:i], True), text)
            if i == len(messages) - 1:
                end = _common_len(self.render(messages, True), text)
            else:
                end = _common_len(self.render(messages[: i + 1]), text)
            spans.append((start, end))
        return spans

    def _pattern_spans(self, messages: Messages, text: str) -> list[tuple[int, int]] | None:
        p = self.pattern
        assert p is not None
        pos, spans = 0, []
        for i, m in enumerate(messages):
            content = m["content"]
            if m["role"] != "assistant":
                # the content as given, or stripped (templates that trim); before a reply,
                # the one that the head follows
                found = [
                    at + len(c)
                    for c in (content, content.strip())
                    if (at := text.find(c, pos)) >= 0
                ]
                if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant":
                    found = [end for end in found if text.startswith(p.head, end)]
                if not found:
                    return None
                pos = found[0]
                continue
            start = pos + len(p.head)
            for c in (content, content.strip()):
                if text.startswith(p.lead + c + p.tail, start):
                    pos = start + len(p.lead) + len(c) + len(p.tail)
                    break
            else:
                return None
            spans.append((start, pos))
        return spans

    def _learn_pattern(self) -> _TurnPattern | None:
        try:
            text = self.render(_PROBE)
            spans = iter(self._exact_spans(_PROBE, text))
        except Exception:  # a template that rejects the probe: label the exact way
            return None
        ends = _Ends(self._backend.encode(text, add_special_tokens=False).offsets)
        found, pos = set(), 0
        for m in _PROBE:
            at = text.find(m["content"], pos)
            if at < 0:
                return None
            content_end = at + len(m["content"])
            if m["role"] == "assistant":
                start, end = next(spans)
                a, b = _offsets_range(ends, text, start, end)
                end = ends[b - 1] if b > a else start
                if not pos <= start <= at or end < content_end:
                    return None
                found.add(_TurnPattern(text[pos:start], text[start:at], text[content_end:end]))
                content_end = end
            pos = content_end
        return found.pop() if len(found) == 1 else None

    def _learn_boundary(self) -> str | None:
        """A special token that the probe render holds once per turn, outside the assistant
        spans, at which the tokenizer splits the text whatever surrounds it: an added token
        matched on the raw text (not normalized), that takes no whitespace before it (no
        lstrip), needs no word boundary (no single_word), and that no other raw added token
        can overlap. Checked on the probe: cut before any of its occurrences, the prefix
        tokenizes to the first tokens of the whole text. None when no token qualifies."""
        try:
            text = self.render(_PROBE)
            spans = self._exact_spans(_PROBE, text)
        except Exception:
            return None
        raw = [t for t in self._backend.get_added_tokens_decoder().values() if not t.normalized]
        full = self._backend.encode(text, add_special_tokens=False).ids
        best: tuple[int, str] | None = None
        for tok in raw:
            b = tok.content
            count = text.count(b)
            if tok.lstrip or tok.single_word or count < len(spans) or (best and count <= best[0]):
                continue
            if any(_overlaps(u.content, b) for u in raw if u.content != b):
                continue
            at, ok = text.find(b, 1), True
            while ok and at > 0:
                ok = not any(a <= at < e for a, e in spans)  # a cut there would cross a span
                ids = self._backend.encode(text[:at], add_special_tokens=False).ids
                ok = ok and full[: len(ids) + 1] == [*ids, self._backend.token_to_id(b)]
                at = text.find(b, at + 1)
            if ok:
                best = (count, b)
        return best[1] if best else None


def _plain_strings(messages: Messages) -> bool:
    """Every message is `{"role": str, "content": str}` of exact `str`s (what `_plain` makes
    of valid rows), which the template may see as they are."""
    return all(
        type(m) is dict
        and m.keys() == {"role", "content"}
        and type(m["role"]) is str
        and type(m["content"]) is str
        for m in messages
    )


def _overlaps(a: str, b: str) -> bool:
    """Whether an occurrence of `a` can share characters with one of `b` without being it:
    `a` starting before or at `b` and ending inside or past its start."""
    return any(b.startswith(a[j:]) or a[j:].startswith(b) for j in range(len(a)))


class _Ends:
    """The end offsets of a tokenization, as a sequence for `bisect`, without copying."""

    __slots__ = ("offsets",)

    def __init__(self, offsets: list[tuple[int, int]]) -> None:
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> int:
        return self.offsets[i][1]


def _common_len(a: str, b: str) -> int:
    """Length of the common prefix of a and b (C-speed compares, O(n log n))."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


# A character span becomes the tokens [a, b) that end inside it: a token that starts before the
# span but ends in it is in (its leading space belongs to the reply), a token that runs past
# the end is out (the overshoot of a prefix compare into `<|endoftext|>` vs `<|user|>`), and
# whitespace-only tokens at the end are dropped (the "\n" after `<|im_end|>`). Trimming whole
# tokens, not characters, keeps end tokens that swallow the newline after them (added tokens
# with rstrip=True, as Phi-3's `<|end|>`).
def _offsets_range(ends: _Ends, text: str, start: int, end: int) -> tuple[int, int]:
    """Tokens [a, b) for the span (start, end], from every token's offsets."""
    a, b = bisect_right(ends, start), bisect_right(ends, end)
    while b > a and text[slice(*ends.offsets[b - 1])].isspace():
        b -= 1
    return a, b


def _char_range(enc: Any, text: str, start: int, end: int) -> tuple[int, int] | None:
    """`_offsets_range` from a few char->token lookups in Rust, without building the offsets
    of every token (a third of the labelling time). None where a char has no token (offsets
    trimmed by the tokenizer): then the offsets are needed."""
    if end <= start:
        return (0, 0)
    a, t = enc.char_to_token(start), enc.char_to_token(end - 1)
    if a is None or t is None:
        return None
    b = t + 1 if enc.token_to_chars(t)[1] <= end else t  # the last token must end in the span
    while b > a and text[slice(*enc.token_to_chars(b - 1))].isspace():
        b -= 1
    return a, b


def _label_prefix(
    enc: Any, text: str, cut: int, spans: list[tuple[int, int]], limit: Any
) -> Encoded | None:
    """Label the tokens of `text[:cut]` (see `ChatEncoder.encode_stream`); None when they
    cannot stand for the whole text: `limit` tokens or fewer (truncation unknown), a labelled
    span across the cut, or no label among the first `limit` tokens (a dropped row, whose
    report needs the whole text)."""
    if len(enc.ids) <= limit or any(a < cut < b for a, b in spans):
        return None
    done = _label(enc, text, [(a, b) for a, b in spans if a < cut])
    return done if done.label_ranges and done.label_ranges[0][0] < limit else None


def _label(enc: Any, text: str, spans: list[tuple[int, int]]) -> Encoded:
    ids = enc.ids
    labels = [IGNORE_INDEX] * len(ids)
    ranges = []
    ends = None
    for start, end in spans:
        r = _char_range(enc, text, start, end)
        if r is None:
            ends = ends or _Ends(enc.offsets)
            r = _offsets_range(ends, text, start, end)
        a, b = r
        if a < b:
            labels[a:b] = ids[a:b]
            ranges.append((a, b))
    return Encoded(ids, labels, ranges)


# -- inputs, splits -------------------------------------------------------------------------------
def model_context_length(model_dir: Path) -> int | None:
    """`max_position_embeddings` of `model_dir/config.json` (or its text_config), if any."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    for c in (cfg, cfg.get("text_config") or {}):
        v = c.get("max_position_embeddings")
        if isinstance(v, int) and v > 0:
            return v
    return None


def _resolve_max_len(cfg: PreprocessConfig) -> int:
    if cfg.max_seq_length != -1:
        return cfg.max_seq_length
    context = model_context_length(cfg.model_dir)
    if context is None:
        raise InvalidParameter(
            f"`max_seq_length` is -1 (the model's context) but {cfg.model_dir}/config.json has "
            "no max_position_embeddings.",
            fix="set `max_seq_length` to a number of tokens",
        )
    return context


def _check_inputs(cfg: PreprocessConfig) -> None:
    """Every missing file or folder at once, each by its parameter."""
    problems = []
    for name, path in cfg.inputs().items():
        if not path.is_file():
            problems.append(f"`{name}` {path} is not a file")
        elif path.suffix.lower() not in SUFFIXES:
            problems.append(f"`{name}` {path} is not one of {', '.join(SUFFIXES)}")
    if not Path(cfg.model_dir).is_dir():
        problems.append(f"`model_dir` {cfg.model_dir} is not a folder")
    elif not _tokenizer_files(cfg.model_dir):
        problems.append(f"`model_dir` {cfg.model_dir} holds no tokenizer files")
    if problems:
        raise InvalidParameter(
            "preprocess cannot start: " + "; ".join(problems) + ".",
            fix="give existing data files and an imported model folder (`chattune model list`)",
        )


# A row on its way: (splits it goes to, line in its file, messages).
_Item = tuple[tuple[str, ...], int, Messages]
# Cuts of the valid rows of one file: [(end, splits)], `end` exclusive, in order.
Cuts = list[tuple[float, tuple[str, ...]]]


def _plan(cfg: PreprocessConfig, valid: dict[str, int]) -> tuple[str, dict[str, Cuts], dict]:
    """Split mode, cuts per file, and each split's source description."""
    n = valid["train_file"]
    inf = float("inf")
    has_val, has_test = cfg.validation_file is not None, cfg.test_file is not None
    if not has_val and not has_test:
        n_tr, n_va = n * 8 // 10, n // 10
        cuts = {"train_file": [(n_tr, ("train",)), (n_tr + n_va, ("validation",))]}
        cuts["train_file"].append((inf, ("test",)))
        src = {
            "train": f"train_file valid rows 1-{n_tr} (80%)",
            "validation": f"train_file valid rows {n_tr + 1}-{n_tr + n_va} (10%)",
            "test": f"train_file valid rows {n_tr + n_va + 1}-{n} (10%)",
        }
        return "train", cuts, src
    if not has_val:
        n_tr = n - n // 5
        cuts = {"train_file": [(n_tr, ("train",)), (inf, ("validation",))]}
        cuts["test_file"] = [(inf, ("test",))]
        src = {
            "train": f"train_file valid rows 1-{n_tr} (80%)",
            "validation": f"train_file valid rows {n_tr + 1}-{n} (last 20%)",
            "test": "test_file",
        }
        return "train+test", cuts, src
    cuts = {"train_file": [(inf, ("train",))]}
    src = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
    if not has_test:
        cuts["validation_file"] = [(inf, ("validation", "test"))]
        src["test"] = "validation_file (no test_file given)"
        return "train+validation", cuts, src
    cuts["validation_file"] = [(inf, ("validation",))]
    cuts["test_file"] = [(inf, ("test",))]
    return "train+validation+test", cuts, src


def _iter_valid(path: Path) -> Iterator[tuple[int, Messages]]:
    for checked in iter_checked(path):
        if checked.ok:
            assert checked.row is not None
            yield checked.line, checked.row["messages"]


# -- output ---------------------------------------------------------------------------------------
class _Column:
    """A list<int32> column, handed to arrow flat (values and offsets): 10x faster than
    `pa.array` on nested Python lists."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def add(self, row: list[int]) -> None:
        self.rows.append(row)

    def take(self, pa: Any) -> Any:
        lengths = np.fromiter(map(len, self.rows), np.int32, count=len(self.rows))
        offsets = np.zeros(len(self.rows) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(chain.from_iterable(self.rows), np.int32, count=int(offsets[-1]))
        self.rows = []
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


class _Outputs:
    """Parquet per split and test_messages.jsonl, written to temporary names, renamed at end."""

    def __init__(self, out: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.out = pa, out
        self.schema = pa.schema(
            [
                ("input_ids", pa.list_(pa.int32())),
                ("labels", pa.list_(pa.int32())),
                ("num_tokens", pa.int32()),
                ("num_label_tokens", pa.int32()),
                ("source_line", pa.int32()),
            ]
        )
        self.names = [f"{s}.parquet" for s in SPLITS] + ["test_messages.jsonl"]
        # no dictionary encoding: token ids of a large vocabulary hardly repeat within a page,
        # and building the dictionary took 4/5 of the write time (files ~20% larger)
        self.writers = {
            s: pq.ParquetWriter(self._tmp(f"{s}.parquet"), self.schema, use_dictionary=False)
            for s in SPLITS
        }
        self.ids = {s: _Column() for s in SPLITS}
        self.labels = {s: _Column() for s in SPLITS}
        self.scalars: dict[str, list[tuple[int, int, int]]] = {s: [] for s in SPLITS}
        self.messages = self._tmp("test_messages.jsonl").open("w", encoding="utf-8")

    def _tmp(self, name: str) -> Path:
        return self.out / f".{name}.tmp"

    def add(self, split: str, ids: list[int], labels: list[int], n_labels: int, line: int) -> None:
        self.ids[split].add(ids)
        self.labels[split].add(labels)
        self.scalars[split].append((len(ids), n_labels, line))

    def add_test_messages(self, messages: Messages, file: Path, line: int) -> None:
        record = {"messages": messages, "source_file": file.name, "source_line": line}
        self.messages.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        pa = self.pa
        for split, scalars in self.scalars.items():
            if scalars:
                cols = [self.ids[split].take(pa), self.labels[split].take(pa)]
                cols += [pa.array(c, pa.int32()) for c in zip(*scalars, strict=True)]
                self.writers[split].write_table(pa.table(cols, schema=self.schema))
                scalars.clear()

    def commit(self) -> None:
        self.flush()
        self.close()
        for name in self.names:
            os.replace(self._tmp(name), self.out / name)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.messages.close()

    def discard(self) -> None:
        self.close()
        for name in self.names:
            self._tmp(name).unlink(missing_ok=True)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


# -- the step -------------------------------------------------------------------------------------
def run_preprocess(cfg: PreprocessConfig, log: Log = print) -> PreprocessReport:
    """Tokenize the conversations of `cfg` into train/validation/test splits.

    Args:
        cfg: the data files, model folder, `max_seq_length` and output folder.
        log: called with one line per event (reads, drops with examples, splits, outputs).

    Returns:
        The `PreprocessReport`, also written last to `output_dir/report.json`.

    Raises:
        InvalidParameter: a file or folder is missing, or `max_seq_length` cannot be resolved.
        TooFewTrainingRows: fewer than 10 training rows left (after drops and truncation).
        ChatTemplateFailed: the chat template fails to render a row (naming file and line).
        NoAssistantTokens: no training row keeps an assistant token after truncation.
    """
    t0 = time.perf_counter()
    _check_inputs(cfg)
    max_len = _resolve_max_len(cfg)
    context = model_context_length(cfg.model_dir)
    if context is not None and max_len > context:
        log(f"warning: max_seq_length {max_len} exceeds the model's context of {context} tokens")
    from transformers import AutoTokenizer

    encoder = ChatEncoder(AutoTokenizer.from_pretrained(cfg.model_dir))
    how = "template pattern learned" if encoder.pattern else "exact per-turn rendering"
    log(f"tokenizer of {cfg.model_dir} ({how}); max_seq_length {max_len}")

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # its presence must mean "complete"

    # pass 1: schema check, counts and drops (the cuts need the number of valid rows)
    drops, rows_read, valid = _Drops(), {}, {}
    for name, path in cfg.inputs().items():
        rows_read[name] = valid[name] = 0
        for checked in iter_checked(path):
            rows_read[name] += 1
            if checked.problem is None:
                valid[name] += 1
            else:
                p = checked.problem
                drops.add(p.reason, path, checked.line, p.detail)
        log(f"read {path}: {rows_read[name]} rows, {valid[name]} valid")
    _log_drops(drops, log)
    mode, cuts, sources = _plan(cfg, valid)
    splits = {s: SplitStats(sources[s]) for s in SPLITS}
    for name, file_cuts in cuts.items():
        lo = 0
        for end, names in file_cuts:
            for s in names:
                splits[s].rows_in += int(min(end, valid[name]) - lo)
            lo = int(min(end, valid[name]))
    for s in SPLITS:
        log(f"{s}: {splits[s].rows_in} rows from {splits[s].source}")
    if mode == "train+validation":
        log("no test_file given: the test split is the validation set")
    if splits["train"].rows_in < MIN_TRAIN_ROWS:
        _too_few(cfg, splits["train"].rows_in, rows_read, drops, mode)

    # pass 2: render, tokenize, label, truncate, write
    def batches() -> Iterator[tuple[tuple[Path, list[_Item]], list[Messages]]]:
        for name, path in cfg.inputs().items():
            items: list[_Item] = []
            for idx, (line, messages) in enumerate(_iter_valid(path)):
                items.append((next(n for end, n in cuts[name] if idx < end), line, messages))
                if len(items) == _CHUNK:
                    yield (path, items), [_plain(m) for _, _, m in items]
                    items = []
            if items:
                yield (path, items), [_plain(m) for _, _, m in items]

    outputs = _Outputs(out)
    first_labels: list[int] = []  # per train row: tokens needed to keep one assistant token
    done, every = 0, _LOG_EVERY
    try:
        try:
            for (path, items), encoded in encoder.encode_stream(batches(), max_len):
                _write_batch(path, items, encoded, max_len, splits, drops, outputs, first_labels)
                done += len(items)
                if done >= every:
                    every += _LOG_EVERY
                    rate = done / (time.perf_counter() - t0)
                    log(f"tokenized {done} conversations ({rate:.0f}/s)")
        except TemplateRenderError as exc:
            path, items = exc.payload
            _, line, messages = items[exc.index]
            row = json.dumps(messages, ensure_ascii=False)
            raise ChatTemplateFailed(
                f"The chat template fails on {path}, line {line}: {exc}. "
                f"Roles of the row: {', '.join(m['role'] for m in messages)}; the row: "
                f"{row[:200]}{'...' if len(row) > 200 else ''}",
                fix="import the model with a chat template that renders such conversations: "
                "`chattune model import SOURCE --chat-template FILE`",
            ) from exc.error
        train = splits["train"]
        if train.rows_in and not train.rows_out:
            _nothing_to_learn(max_len, first_labels, train.rows_in)
        if train.rows_out < MIN_TRAIN_ROWS:
            _too_few(cfg, train.rows_out, rows_read, drops, mode)
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise
    if encoder.exact_count:
        log(f"{encoder.exact_count} conversations labelled by exact per-turn rendering")
    if encoder.prefix_count:
        log(
            f"{encoder.prefix_count} long conversations tokenized up to the first "
            f"{encoder.boundary} past {max_len * _PREFIX_CHARS_PER_TOKEN} characters"
        )

    _log_drops(drops, log)
    report = PreprocessReport(
        max_seq_length=max_len,
        split_mode=mode,
        rows_read=rows_read,
        splits=splits,
        dropped=drops.by_slug,
        cache_key=preprocess_cache_key(cfg),
        seconds=round(time.perf_counter() - t0, 3),
    )
    for s, st in splits.items():
        log(
            f"{s}: {st.rows_out} rows, {st.tokens} tokens, {st.label_tokens} label tokens, "
            f"{st.truncated} truncated to {max_len}"
        )
    _write_json_atomic(out / "report.json", report.to_dict())
    log(f"wrote {out} in {report.seconds:.1f}s")
    return report


def _plain(messages: Messages) -> Messages:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _write_batch(
    path: Path,
    items: list[_Item],
    encoded: list[Encoded],
    max_len: int,
    splits: dict[str, SplitStats],
    drops: _Drops,
    outputs: _Outputs,
    first_labels: list[int],
) -> None:
    for (names, line, messages), enc in zip(items, encoded, strict=True):
        n = len(enc.input_ids)
        if "train" in names and enc.first_label is not None:
            first_labels.append(enc.first_label + 1)
        n_labels = sum(max(0, min(b, max_len) - a) for a, b in enc.label_ranges)
        if not n_labels:
            if enc.first_label is None:
                drops.add(DROP_NO_LABELS, path, line, f"{n} tokens, none from the assistant")
            else:
                drops.add(
                    DROP_TRUNCATED,
                    path,
                    line,
                    f"{n} tokens, first assistant token at {enc.first_label + 1}",
                )
            continue
        ids, labels = enc.input_ids[:max_len], enc.labels[:max_len]
        for s in names:
            st = splits[s]
            st.rows_out += 1
            st.tokens += len(ids)
            st.label_tokens += n_labels
            st.truncated += n > max_len
            outputs.add(s, ids, labels, n_labels, line)
            if s == "test":
                outputs.add_test_messages(messages, path, line)
    outputs.flush()


def _log_drops(drops: _Drops, log: Log) -> None:
    for d in drops.by_slug.values():
        where = ", ".join(f"{e.file}:{e.line} ({e.detail})" for e in d.examples)
        log(f"dropped {d.count} rows: {d.reason}; first: {where}")


def _too_few(
    cfg: PreprocessConfig, kept: int, rows_read: dict[str, int], drops: _Drops, mode: str
) -> None:
    cut = " after the 80/10/10 split" if mode == "train" else ""
    cut = " after moving the last 20% to validation" if mode == "train+test" else cut
    fix = (
        f"add conversations to `train_file` ({cfg.train_file}), or run "
        f"`chattune data validate {cfg.train_file}` to see why rows are dropped"
    )
    if reason_slug(DROP_TRUNCATED) in drops.by_slug:
        fix += ", or raise `max_seq_length`"
    raise TooFewTrainingRows(
        f"Only {kept} training rows remain{cut}, at least {MIN_TRAIN_ROWS} are needed: "
        f"{sum(rows_read.values())} rows read, {drops.total()} dropped "
        f"({drops.summary()}).",
        fix=fix,
    )


def _nothing_to_learn(max_len: int, first_labels: list[int], rows: int) -> None:
    if not first_labels:
        raise NoAssistantTokens(
            f"The chat template wrote no assistant tokens in any of the {rows} training rows.",
            fix="import the model with a chat template that renders assistant messages: "
            "`chattune model import SOURCE --chat-template FILE`",
        )
    first_labels.sort()
    ten = first_labels[min(MIN_TRAIN_ROWS, len(first_labels)) - 1]
    raise NoAssistantTokens(
        f"No training row keeps an assistant token within max_seq_length={max_len}: "
        f"all {rows} rows were dropped (the shortest prompt before a reply is "
        f"{first_labels[0] - 1} tokens).",
        fix=f"raise `max_seq_length` to at least {first_labels[0]} "
        f"({ten} keeps {MIN_TRAIN_ROWS} rows), or shorten the system prompts",
    )


# -- cache key ------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _tokenizer_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    files = [p for p in model_dir.iterdir() if p.is_file() and _TOKENIZER_FILE.match(p.name)]
    extra = model_dir / "additional_chat_templates"
    if extra.is_dir():
        files += [p for p in extra.iterdir() if p.is_file()]
    return sorted(files)


def preprocess_cache_key(cfg: PreprocessConfig) -> str:
    """sha256 over what decides the output: data file contents (by parameter), tokenizer files
    (chat template included), the resolved `max_seq_length`, `seed` and the output format.

    Paths, `output_dir` and the model's weights do not enter it: moving or copying the same
    files gives the same key.
    """
    model_dir = Path(cfg.model_dir)
    max_len = cfg.max_seq_length
    if max_len == -1:
        max_len = model_context_length(model_dir) or -1
    payload = {
        "format_version": FORMAT_VERSION,
        "data": {name: _sha256_file(p) for name, p in cfg.inputs().items()},
        "tokenizer": {
            str(p.relative_to(model_dir)): _sha256_file(p) for p in _tokenizer_files(model_dir)
        },
        "params": {"max_seq_length": max_len, "seed": cfg.seed},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
