"""Request bodies of chattune's HTTP servers: JSON parsed once, its nesting bounded, into a
wire model (`model_server.schemas`); and how a route that reads its body itself documents it.

The gateway parses each body before it takes an in-flight slot (a malformed request is a 400,
never a 429) and the model server parses again in case it is reached directly; both through
`parse_body`, so both refuse the same bodies with the same messages.

A body nested deeper than `MAX_DEPTH` is refused before any parser recurses into it
(Python's `json` raised `RecursionError` near 1,000 levels, a 500). The depth is counted over
the raw bytes, in C: on this project's loaded 2-core CPU at most 60 ms for a 1.5 MB body (one
opening bracket after another), 24 ms for 1.4 MB of small arrays, against 104 ms for
`json.loads` of those and 169 ms more for a walk of the parsed value.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any, TypeVar

from fastapi import FastAPI
from pydantic import BaseModel, ValidationError

from chattune.errors import InvalidRequest
from chattune.serving.model_server.schemas import ChatCompletion, ScoreResponse

MAX_DEPTH = 64  # arrays and objects; a chat request nests 4 deep, a /score request 6
DOCS_HINT = "(the OpenAPI document: GET /openapi.json)"

M = TypeVar("M", bound=BaseModel)

# a JSON string, escapes included (unrolled, so a long string is one linear scan)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = [0] * 256  # what each bracket does to the depth
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def nesting_depth(raw: bytes) -> int:
    """How deep the JSON text `raw` nests arrays and objects (`[[1], {}]`: 2).

    Exact for valid JSON; for invalid JSON, the deepest point of the brackets outside
    strings (a body that only opens, `[[[[...`, is as deep as it opens). Runs in C: the
    strings cut out by one regex, the brackets summed by `accumulate` over `map`.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def parse_body(model: type[M], raw: bytes) -> M:
    """`raw` parsed into `model` (pydantic parses it, once).

    Raises:
        InvalidRequest: nested deeper than `MAX_DEPTH`, not JSON, or a field is missing,
            of the wrong type or out of range (400, each naming the field).
    """
    if (depth := nesting_depth(raw)) > MAX_DEPTH:
        raise InvalidRequest(
            f"the body nests arrays and objects {depth} levels deep; the limit is {MAX_DEPTH}.",
            fix="send the request as the API documents it " + DOCS_HINT + ".",
            param="body",
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    bad_json = [e for e in errors if e["type"] == "json_invalid"]
    if bad_json:
        return InvalidRequest(
            f"the body is not valid JSON ({bad_json[0]['msg']}); send a JSON object.",
            param="body",
        )
    parts, param = [], None
    for err in errors:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        param = param or where
        parts.append(f"`{where}`: {err['msg']}")
    return InvalidRequest(
        "invalid request: " + "; ".join(parts[:6]) + ". Send the named fields as the API "
        "documents them " + DOCS_HINT + ".",
        param=param,
    )


# -- what the OpenAPI documents say about these bodies -------------------------------------------
def body_doc(model: type[BaseModel], example: dict[str, Any] | None = None) -> dict[str, Any]:
    """A route's `openapi_extra`: its JSON body is `model` (the route parses it itself, with
    `parse_body`, so FastAPI cannot see it); `add_body_schemas` puts the schema in."""
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def add_body_schemas(document: dict[str, Any], *models: type[BaseModel]) -> dict[str, Any]:
    """`document` (an OpenAPI dict) with the JSON schemas of `models` (and the models they
    hold) among its components, where `body_doc`'s references point."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return document


def document_bodies(app: FastAPI, *models: type[BaseModel]) -> None:
    """Make `app`'s OpenAPI document hold the schemas of `models` (the bodies its routes
    declare with `body_doc`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_body_schemas(build(), *models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"enum": ["message", "error"]}},
}
# The 200 answer of `POST /v1/chat/completions`: JSON, or with `stream: true` server-sent
# events, each `data: <ChatCompletionChunk>`, then `data: [DONE]`.
CHAT_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with `stream: true`, server-sent events: one "
        "`data: {chat.completion.chunk}` per delta, then `data: [DONE]` (an error after the "
        "status was sent comes as a last event carrying the error envelope).",
        "model": ChatCompletion,
        # OpenAPI 3.2's `itemSchema`: what each event is (its `data` a chunk's JSON, then
        # `[DONE]`; or the error envelope's JSON, as `event: error` from the gateway)
        "content": {"text/event-stream": {"itemSchema": _EVENT}},
    }
}
SCORE_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "One text, or one per conversation (in order).", "model": ScoreResponse}
}
