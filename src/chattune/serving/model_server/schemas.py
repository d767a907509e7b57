"""Wire models of the model server: the seed's scoring API and OpenAI's chat completions
(requests, responses and stream chunks), and the small replies of the health routes.

Request types are strict (`"0.5"` is not a temperature, `1.0` is not a token count), so a
wrong type is a 400 naming the field; ranges that depend on the model (tokens left in the
context) are checked by the service once the prompt's length is known. Response models
serialize to exactly the JSON OpenAI's clients expect; none of this imports the engine.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from chattune.errors import InvalidRequest

_STRICT = ConfigDict(strict=True, extra="ignore")
SCORE_DEFAULT_MAX_NEW_TOKENS = 256  # `/score`'s answer length when the request names none
# OpenAI's roles -> the chat template's
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


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

    @property
    def nested(self) -> bool:
        """Whether `input_string` is a list of conversations (else one conversation)."""
        return bool(self.input_string) and isinstance(self.input_string[0], list)

    def conversations(self) -> list[list[ChatMessage]]:
        return self.input_string if self.nested else [self.input_string]  # type: ignore[list-item,return-value]

    def chat_requests(self, model: str) -> list[ChatCompletionRequest]:
        """The same generations as chat completions, one per conversation (for an engine
        that speaks only OpenAI's API): greedy unless `do_sample`, as the built-in engine;
        `SCORE_DEFAULT_MAX_NEW_TOKENS` unless given (the engine caps it to the context)."""
        p = self.parameters
        max_new = p.max_new_tokens if p.max_new_tokens is not None else p.max_gen_len
        return [
            ChatCompletionRequest(
                model=model,
                messages=conv,
                temperature=(1.0 if p.temperature is None else p.temperature)
                if p.do_sample
                else 0.0,
                top_p=p.top_p if p.do_sample else None,
                max_completion_tokens=SCORE_DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new,
            )
            for conv in self.conversations()
        ]


class ScoreRequest(BaseModel):
    """`POST /score`: `{"input_data": {"input_string": [...], "parameters": {...}},
    "params": {}}`."""

    model_config = _STRICT
    input_data: ScoreInput
    params: dict[str, Any] = Field(default_factory=dict)


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """`raw` parsed into `model`; malformed JSON or a wrong field is a 400 naming it."""
    try:
        json.loads(raw or b"")
    except ValueError as exc:
        raise InvalidRequest(
            f"the body is not valid JSON ({exc}); send a JSON object.", param="body"
        ) from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        parts, param = [], None
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "body"
            param = param or where
            parts.append(f"`{where}`: {err['msg']}")
        raise InvalidRequest(
            "invalid request: " + "; ".join(parts[:6]) + ". Send the named fields as "
            "the API documents them (GET /docs).",
            param=param,
        ) from None


# -- responses -----------------------------------------------------------------------------------
class ScoreResponse(BaseModel):
    """`/score`'s answer: one text, or one per conversation (in order) for several."""

    output: str | list[str]

    @classmethod
    def of(cls, texts: list[str]) -> ScoreResponse:
        """The answer to the conversations that gave `texts` (the seed's [conversation]
        answers one string)."""
        return cls(output=texts if len(texts) > 1 else texts[0])


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletion(BaseModel):
    """`POST /v1/chat/completions` without `stream`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class _OmitsNone(BaseModel):
    """Leaves out the fields named in `_omit_if_none` while they are None (OpenAI's chunks
    have no `usage` key until the last one, and a delta holds only what it adds)."""

    _omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k not in self._omit_if_none or v is not None}


class Delta(_OmitsNone):
    """What one stream chunk adds to the message."""

    _omit_if_none = ("role", "content")
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletionChunk(_OmitsNone):
    """One server-sent event of a streamed chat completion."""

    _omit_if_none = ("usage",)
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def sse(self) -> str:
        """The chunk as one server-sent event."""
        return f"data: {self.model_dump_json()}\n\n"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    """`GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]

    @classmethod
    def of(cls, names: list[str], owned_by: str) -> ModelList:
        return cls(data=[ModelCard(id=name, owned_by=owned_by) for name in names])


class StatusReply(BaseModel):
    """`GET /health` and `GET /ready` when all is well."""

    status: str


class ReadyReply(StatusReply):
    """The gateway's `GET /ready`: the deployments that can answer."""

    deployments: list[str]
