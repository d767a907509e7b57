"""Wire models of the model server: the seed's scoring request and OpenAI chat completions.

Types are strict (`"0.5"` is not a temperature, `1.0` is not a token count), so a wrong
type is a 400 naming the field; ranges that depend on the model (tokens left in the context)
are checked by `max_tokens` and friends below, once the prompt's length is known. Each
raises `HTTPProblem(400)` naming the field and the fix.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chattune.errors import ChattuneError
from chattune.serving.http_errors import HTTPProblem
from chattune.serving.model_server.engine import SamplingParams

if TYPE_CHECKING:
    from chattune.serving.model_server.chat import ChatPrompter
    from chattune.serving.model_server.engine import Engine

_STRICT = ConfigDict(strict=True, extra="ignore")
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


class ScoreRequest(BaseModel):
    """`POST /score`: `{"input_data": {"input_string": [...], "parameters": {...}},
    "params": {}}`."""

    model_config = _STRICT
    input_data: ScoreInput
    params: dict[str, Any] = Field(default_factory=dict)


# -- checking requests ----------------------------------------------------------------------------
def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """`raw` parsed into `model`; malformed JSON or a wrong field is a 400 naming it."""
    try:
        json.loads(raw or b"")
    except ValueError as exc:
        raise HTTPProblem(
            400, f"the body is not valid JSON ({exc}); send a JSON object.", param="body"
        ) from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        parts, param = [], None
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "body"
            param = param or where
            parts.append(f"`{where}`: {err['msg']}")
        raise HTTPProblem(
            400,
            "invalid request: " + "; ".join(parts[:6]) + ". Send the named fields as "
            "the API documents them (GET /docs).",
            param=param,
        ) from None


def prompt_ids(
    prompter: ChatPrompter, engine: Engine, messages: list[ChatMessage], field: str
) -> list[int]:
    """The prompt ids of `messages` (roles checked, the model's template applied); 400 if
    empty, a role is unknown, the template rejects them, or they fill the context."""
    if not messages:
        raise HTTPProblem(400, f"`{field}` is empty; send at least one message.", param=field)
    plain = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise HTTPProblem(
                400,
                f"`{field}[{i}].role` is {m.role!r}; use one of system, user, assistant.",
                param=f"{field}[{i}].role",
            )
        plain.append({"role": role, "content": m.text()})
    try:
        ids = prompter.encode(plain)
    except ChattuneError as exc:
        raise HTTPProblem(400, str(exc), param=field) from None
    if len(ids) >= engine.context_length:
        raise HTTPProblem(
            400,
            f"the prompt is {len(ids)} tokens; the model's context is {engine.context_length} "
            f"tokens, with room for an answer. Shorten `{field}`.",
            param=field,
        )
    return ids


def max_tokens(
    engine: Engine, ids: list[int], value: int | None, field: str, default: int | None = None
) -> int:
    """The answer's token budget: `value`, checked against the context left after the
    prompt, or by default `default` (capped to that) or all that is left."""
    left = engine.context_length - len(ids)
    if value is None:
        return min(default, left) if default is not None else left
    if value < 1:
        raise HTTPProblem(400, f"`{field}` is {value}; it must be >= 1.", param=field)
    if value > left:
        raise HTTPProblem(
            400,
            f"`{field}` is {value}, above the {left} tokens the context has left after the "
            f"prompt ({len(ids)} of {engine.context_length} tokens); set it to at most {left} "
            "or shorten the messages.",
            param=field,
        )
    return value


def sampling_params(
    engine: Engine,
    temperature: float | None,
    top_p: float | None,
    max_new: int,
    prefix: str,
    *,
    do_sample: bool,
    seed: int | None = None,
    stop: list[str] | None = None,
) -> SamplingParams:
    """`SamplingParams` from checked values (temperature >= 0, top_p in (0, 1])."""

    def name(f: str) -> str:
        return f"{prefix}.{f}" if prefix else f

    if temperature is not None and temperature < 0:
        raise HTTPProblem(
            400, f"`{name('temperature')}` is {temperature}; it must be >= 0 (0 = greedy).",
            param=name("temperature"),
        )  # fmt: skip
    if top_p is not None and not 0 < top_p <= 1:
        raise HTTPProblem(
            400, f"`{name('top_p')}` is {top_p}; it must be in (0, 1] (1 = no nucleus cut).",
            param=name("top_p"),
        )  # fmt: skip
    return SamplingParams(
        max_new_tokens=max_new,
        do_sample=do_sample,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
        stop=tuple(stop or ()),
    )
