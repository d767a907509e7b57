"""Checks of a model-server request that need the model (JSON and types are checked by
`schemas.parse_body`): roles and the chat template, and token budgets against the context
left after the prompt. Each raises `InvalidRequest` (400) naming the field and the fix."""

from __future__ import annotations

from chattune.errors import ChattuneError, InvalidRequest
from chattune.serving.model_server.chat import ChatPrompter
from chattune.serving.model_server.engine import Engine, SamplingParams
from chattune.serving.model_server.schemas import ROLES, ChatMessage


def prompt_ids(
    prompter: ChatPrompter, engine: Engine, messages: list[ChatMessage], field: str
) -> list[int]:
    """The prompt ids of `messages` (roles checked, the model's template applied); 400 if
    empty, a role is unknown, the template rejects them, or they fill the context."""
    if not messages:
        raise InvalidRequest(f"`{field}` is empty; send at least one message.", param=field)
    plain = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise InvalidRequest(
                f"`{field}[{i}].role` is {m.role!r}; use one of system, user, assistant.",
                param=f"{field}[{i}].role",
            )
        plain.append({"role": role, "content": m.text()})
    try:
        ids = prompter.encode(plain)
    except ChattuneError as exc:  # the chat template refused the messages
        raise InvalidRequest(exc.message, exc.fix, param=field) from None
    if len(ids) >= engine.context_length:
        raise InvalidRequest(
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
        raise InvalidRequest(f"`{field}` is {value}; it must be >= 1.", param=field)
    if value > left:
        raise InvalidRequest(
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
        raise InvalidRequest(
            f"`{name('temperature')}` is {temperature}; it must be >= 0 (0 = greedy).",
            param=name("temperature"),
        )  # fmt: skip
    if top_p is not None and not 0 < top_p <= 1:
        raise InvalidRequest(
            f"`{name('top_p')}` is {top_p}; it must be in (0, 1] (1 = no nucleus cut).",
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
