"""Wire models of the model server: the seed's scoring API and OpenAI's chat completions
(requests, responses and stream chunks), and the small replies of the health routes.

Request types are strict (`"0.5"` is not a temperature, `1.5` is not a token count; `14.0`
is, as JSON Schema's integer), and ranges, roles and the fields this server cannot honour
are stated here, so the OpenAPI documents (made from these models) say exactly what is
accepted, and anything else is a 400 naming the field (`serving.bodies.parse_body`). Limits
that depend on the model (tokens left in the context) are checked by the service once the
prompt's length is known. Response models serialize to exactly the JSON OpenAI's clients
expect; none of this imports the engine.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

# JSON has no NaN or infinity: `NaN`, `Infinity` and 1e400 are refused, not turned into floats
_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
SCORE_DEFAULT_MAX_NEW_TOKENS = 256  # `/score`'s answer length when the request names none
# OpenAI's roles -> the chat template's
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
INT64 = 2**63  # seeds: what a torch.Generator takes
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class TextPart(BaseModel):
    """One part of a message's content list (`{"type": "text", "text": "..."}`)."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message: `role` and `content` (a string, or a list of text parts)."""

    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class TextFormat(BaseModel):
    """`response_format`: plain text is the only format this server writes."""

    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["text"]


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's integer: 14.0 is one (as OpenAI takes it), 1.5 and "14" are not
# (the bounds before the validator, or the JSON schema says `ge`, which JSON Schema has not)
Int = Annotated[int, BeforeValidator(_whole)]
Count = Annotated[int, Field(ge=1), BeforeValidator(_whole)]  # tokens to generate
Seed = Annotated[int, Field(ge=-INT64, lt=INT64), BeforeValidator(_whole)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), BeforeValidator(_whole)]


def _unsupported(message: str) -> PydanticCustomError:
    """A field's value this server cannot honour: a 400 naming it (and what would do)."""
    return PydanticCustomError("unsupported", message)


Messages = Annotated[list[ChatMessage], Field(min_length=1)]


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`: OpenAI's schema. Fields this server cannot honour are
    refused (400 naming them) unless they ask for nothing (`tools: []`,
    `response_format: {"type": "text"}`); unknown fields are ignored."""

    model_config = _STRICT
    model: str | None = Field(
        None, description="A deployment of the endpoint (see /v1/models), or the endpoint's "
        "name to follow its traffic split; left out: the traffic split."
    )  # fmt: skip
    messages: Messages
    temperature: float | None = Field(None, ge=0, description="0 = greedy; default 1.0.")
    top_p: float | None = Field(None, gt=0, le=1, description="In (0, 1]; default 1.0.")
    max_tokens: Count | None = Field(None, description="Deprecated: max_completion_tokens.")
    max_completion_tokens: Count | None = Field(
        None, description="Default: the context left after the prompt (more is a 400)."
    )
    n: Int = Field(1, ge=1, le=1, description="Choices per request: 1 only.")
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = Field(
        None, description="Return the log probability of each answer token (the model's own "
        "distribution, before temperature and top_p)."
    )  # fmt: skip
    top_logprobs: TopLogprobs | None = Field(
        None, description="With logprobs: the most likely tokens at each position, and theirs."
    )
    response_format: TextFormat | None = Field(None, description='{"type": "text"} only.')
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=0, description="Not supported: empty or left out."
    )
    tool_choice: Literal["none", "auto"] | None = Field(
        None, description="No tools can be called: none, auto or left out."
    )

    @field_validator("response_format", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") != "text":
            raise _unsupported(
                f"type {value.get('type')!r} is not supported: this server answers in plain "
                'text; leave response_format out or send {"type": "text"}'
            )
        return value

    @field_validator("n", mode="before")
    @classmethod
    def _one_choice(cls, value: Any) -> Any:
        if isinstance(value, int) and value != 1:
            raise _unsupported(f"n={value} is not supported: one choice per request; set n to 1")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if isinstance(value, list) and value:
            raise _unsupported("not supported: this server does not call tools; leave it out")
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise _unsupported(
                f"{value!r} is not supported: this server does not call tools; leave it out"
            )
        return value


class ScoreParameters(BaseModel):
    """The seed's `parameters` (Hugging Face generate names); any other is refused."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    do_sample: bool | None = None
    max_new_tokens: Count | None = None
    max_gen_len: Count | None = Field(None, description="Alias of max_new_tokens.")

    @model_validator(mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        unknown = [k for k in value if k not in cls.model_fields] if isinstance(value, dict) else []
        if unknown:
            raise _unsupported(
                f"{', '.join(map(repr, unknown))} not supported; the parameters are "
                f"{', '.join(cls.model_fields)}"
            )
        return value


Conversation = Annotated[list[ChatMessage], Field(min_length=1)]


class ScoreInput(BaseModel):
    model_config = _STRICT
    # a flat list of messages (one conversation) or a list of conversations
    input_string: Conversation | Annotated[list[Conversation], Field(min_length=1)]
    parameters: ScoreParameters = Field(default_factory=ScoreParameters)

    @field_validator("input_string", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == []:  # else the union reports it once per branch
            raise PydanticCustomError("too_short", "empty; send a conversation (messages)")
        return value

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
    params: dict[str, Any] = Field(
        default_factory=dict, max_length=0,
        description="MLflow's inference params: none are supported (generation parameters "
        "go in input_data.parameters); empty or left out.",
    )  # fmt: skip

    @field_validator("params", mode="before")
    @classmethod
    def _no_params(cls, value: Any) -> Any:
        if isinstance(value, dict) and value:
            raise _unsupported(
                f"{', '.join(map(repr, value))} not supported: generation parameters go in "
                "input_data.parameters"
            )
        return value


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


class TopLogprob(BaseModel):
    """A token and its log probability (`bytes`: its UTF-8 bytes, which may be part of a
    character)."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """One answer token: its log probability and the `top_logprobs` most likely tokens."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """`choices[].logprobs` (OpenAI's shape): one entry per answer token, in order."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
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
    logprobs: ChoiceLogprobs | None = None
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
