"""Wire models of the model server: the seed's scoring request and OpenAI chat completions.

Types are strict (`"0.5"` is not a temperature, `1.0` is not a token count), so a wrong
type is a 400 naming the field; ranges that depend on the model (tokens left in the context)
are checked by the service, which knows the prompt's length.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(strict=True, extra="ignore")


class TextPart(BaseModel):
    """One part of a message's content list (`{"type": "text", "text": "..."}`)."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message: `role` and `content` (a string, or a list of text parts)."""

    model_config = _STRICT
    role: str
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions` (the OpenAI schema; unknown fields are ignored)."""

    model_config = _STRICT
    model: str | None = None
    messages: list[ChatMessage]
    temperature: float | None = Field(None, description="0 = greedy; default 1.0.")
    top_p: float | None = Field(None, description="In (0, 1]; default 1.0.")
    max_tokens: int | None = Field(None, description="Deprecated alias of max_completion_tokens.")
    max_completion_tokens: int | None = Field(None, description="Default: the context left.")
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class ScoreParameters(BaseModel):
    """The seed's `parameters` (Hugging Face generate names)."""

    model_config = _STRICT
    temperature: float | None = None
    top_p: float | None = None
    do_sample: bool | None = None
    max_new_tokens: int | None = None
    max_gen_len: int | None = Field(None, description="Alias of max_new_tokens.")


class ScoreInput(BaseModel):
    model_config = _STRICT
    # a flat list of messages (one conversation) or a list of conversations
    input_string: list[ChatMessage] | list[list[ChatMessage]]
    parameters: ScoreParameters = Field(default_factory=ScoreParameters)


class ScoreRequest(BaseModel):
    """`POST /score`: `{"input_data": {"input_string": [...], "parameters": {...}},
    "params": {}}`."""

    model_config = _STRICT
    input_data: ScoreInput
    params: dict[str, Any] = Field(default_factory=dict)
