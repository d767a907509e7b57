"""Render conversations with a chat template, tokenize them and label the assistant tokens.

`ChatEncoder` is what the preprocess step (`chattune.train.preprocess`) and the model server
use: per conversation, the token ids and labels that are -100 except on assistant messages
(their content and the end-of-turn token(s) the template writes after it).

Example:
    >>> enc = ChatEncoder(AutoTokenizer.from_pretrained("models/smol"))
    >>> [e] = enc.encode([[{"role": "user", "content": "Hi"},
    ...                    {"role": "assistant", "content": "Hello"}]])
    >>> e.input_ids, e.labels, e.label_ranges
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from chattune.errors import DatasetInvalid

Messages = list[dict[str, Any]]
T = TypeVar("T")

IGNORE_INDEX = -100
# With a token limit, a conversation is tokenized up to a turn boundary at least this many
# characters per token of the limit into it (see `ChatEncoder.encode_stream`): English text runs
# about 4.4 characters per BPE token, so the prefix nearly always holds the limit; when it
# does not, the whole text is tokenized.
_PREFIX_CHARS_PER_TOKEN = 5


class ChatTemplateFailed(DatasetInvalid):
    """The chat template cannot render a conversation (or the tokenizer has none)."""


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
        name = getattr(error, "type_name", type(error).__name__)
        super().__init__(f"{name}: {error}")
        self.index, self.error, self.payload = index, error, payload

    def __reduce__(self) -> tuple[Any, ...]:
        # across processes the template's exception travels as its type's name and text
        # (jinja's exceptions do not all pickle), the payload stays behind
        error = RemoteError(
            getattr(self.error, "type_name", type(self.error).__name__), str(self.error)
        )
        return (type(self), (self.index, error))


class RemoteError(Exception):
    """An exception raised in another process, by its type's name and its text."""

    def __init__(self, type_name: str, text: str) -> None:
        super().__init__(text)
        self.type_name = type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, str(self)))


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
        if not getattr(tokenizer, "is_fast", False):
            raise ChatTemplateFailed(
                f"{type(tokenizer).__name__} is not a fast tokenizer: no offsets to label with.",
                fix="import the model with a tokenizer.json (fast tokenizer)",
            )
        try:
            template = tokenizer.get_chat_template()
        except ValueError as exc:
            raise ChatTemplateFailed(
                f"The tokenizer has no chat template ({exc}).",
                fix="import the model again with one: `chattune model import SOURCE "
                "--chat-template FILE`",
            ) from None
        # a private copy, so that truncation or padding set on the tokenizer cannot apply
        backend = tokenizer.backend_tokenizer.to_str()
        self._setup(template, dict(tokenizer.special_tokens_map), backend, fast, None)

    def _setup(
        self,
        template: str,
        kwargs: dict[str, Any],
        backend: str,
        fast: bool,
        learned: tuple[_TurnPattern | None, str | None] | None,
    ) -> None:
        from tokenizers import Tokenizer
        from transformers.utils.chat_template_utils import render_jinja_template

        self.template = template
        self._render_batch = render_jinja_template
        self._kwargs = kwargs
        self._backend = Tokenizer.from_str(backend)
        self._backend.no_truncation()
        self._backend.no_padding()
        self._fast = fast
        self._direct = self._direct_renderer() if fast else None
        if learned is None:
            learned = (self._learn_pattern(), self._learn_boundary()) if fast else (None, None)
        self.pattern, self.boundary = learned
        self.exact_count = 0  # conversations labelled the exact (slow) way
        self.prefix_count = 0  # conversations tokenized only up to a turn boundary

    def state(self) -> dict[str, Any]:
        """Plain, picklable data from which `from_state` makes the same encoder in another
        process, without transformers' tokenizer classes (nor torch) imported there."""
        return {
            "template": self.template,
            "kwargs": self._kwargs,
            "backend": self._backend.to_str(),
            "fast": self._fast,
            "learned": (self.pattern, self.boundary),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ChatEncoder:
        """The encoder whose `state()` this is: same template, tokenizer, pattern, boundary."""
        encoder = cls.__new__(cls)
        encoder._setup(
            state["template"], state["kwargs"], state["backend"], state["fast"], state["learned"]
        )
        return encoder

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
