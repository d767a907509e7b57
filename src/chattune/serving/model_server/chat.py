"""Chat messages -> prompt token ids, exactly as training rendered them; and when to stop.

The prompt is the chat template stored with the model (the one the preprocess step trained
with), rendered by the same code (`chattune.train.preprocess.ChatEncoder.render`, with the
tokenizer's special tokens as template variables) with `add_generation_prompt=True`, and
tokenized as training tokenized it: without adding special tokens (the template writes them).

On the way out, `Detokenizer` turns tokens into text deltas and `StopMatcher` cuts the text
at the request's stop strings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from chattune.errors import InvalidParameter

log = logging.getLogger("chattune.serving")

Messages = list[dict[str, str]]


class ChatTemplateRejected(InvalidParameter):
    """The model's chat template raised on these messages (its own rules, e.g. alternation)."""


class ChatPrompter:
    """Render chat requests into prompt ids with the model's own chat template.

    Args:
        tokenizer: the tokenizer saved with the model (fast, with a chat template).
    """

    def __init__(self, tokenizer: Any) -> None:
        from chattune.train.preprocess import ChatEncoder

        self.tokenizer = tokenizer
        self.encoder = ChatEncoder(tokenizer, fast=False)

    def render(self, messages: Messages) -> str:
        """The prompt text: the conversation and the assistant's generation prompt."""
        try:
            return self.encoder.render(messages, add_generation_prompt=True)
        except Exception as exc:  # jinja's TemplateError, raise_exception(...) in templates
            raise ChatTemplateRejected(
                f"the model's chat template rejects these messages: {exc}",
                fix="send messages in the order the model's template accepts (usually an "
                "optional system message, then user and assistant turns alternating).",
            ) from None

    def encode(self, messages: Messages) -> list[int]:
        """Prompt token ids for `messages`."""
        text = self.render(messages)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def model_context_length(config: Any) -> int:
    """The model's context in tokens (`max_position_embeddings` and its aliases)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    log.warning("the model config names no context length; assuming 2048 tokens")
    return 2048


# -- text out ---------------------------------------------------------------------------------
class Detokenizer:
    """Incremental detokenization: a delta is emitted only once it no longer ends in a half
    UTF-8 character (U+FFFD from a byte-level token that a later token completes)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] were decoded into the text already emitted
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]


class StopMatcher:
    """Holds back the last `len(longest stop) - 1` characters, so that a stop string split
    across deltas is never partly emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.buf = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text to emit now, whether a stop string was hit)."""
        self.buf += text
        hits = [i for s in self.stops if (i := self.buf.find(s)) >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        cut = max(0, len(self.buf) - self.keep)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out
