"""What the gateway's OpenAPI document says about the bodies it forwards.

The gateway forwards bodies as bytes (it must count them for the 413 limit and must not
reject what the model server would accept), so FastAPI cannot derive their schemas from
pydantic parameters: they are written here, following the model server's wire format
(DESIGN.md: the scoring request; OpenAI's chat-completion request).
"""

from __future__ import annotations

from typing import Any

from chattune.serving.headers import DEPLOYMENT_HEADER

DESCRIPTION = (
    "An online endpoint. Every route except `/health` and `/ready` needs "
    f"`Authorization: Bearer <key>`. The header `{DEPLOYMENT_HEADER}: NAME` picks a "
    "deployment and bypasses the traffic split; every answer names the deployment that gave "
    "it in the same header."
)

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
    },
}

_SCORE_SCHEMA = {
    "type": "object",
    "required": ["input_data"],
    "properties": {
        "input_data": {
            "type": "object",
            "required": ["input_string"],
            "properties": {
                "input_string": {
                    "type": "array",
                    "description": "a conversation (a list of messages), or a list of "
                    "conversations",
                    "items": {"oneOf": [_MESSAGE, {"type": "array", "items": _MESSAGE}]},
                },
                "parameters": {
                    "type": "object",
                    "properties": {
                        "temperature": {"type": "number", "minimum": 0},
                        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                        "do_sample": {"type": "boolean"},
                        "max_new_tokens": {"type": "integer", "minimum": 1},
                        "max_gen_len": {"type": "integer", "description": "max_new_tokens"},
                    },
                },
            },
        },
        "params": {"type": "object"},
    },
}

_CHAT_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string", "description": "a deployment name (see /v1/models)"},
        "messages": {"type": "array", "items": _MESSAGE},
        "temperature": {"type": "number", "minimum": 0},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean", "description": "answer with server-sent events"},
    },
}


def _body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


SCORE = _body(
    _SCORE_SCHEMA,
    {
        "input_data": {
            "input_string": [[{"role": "user", "content": "What is the tallest mountain?"}]],
            "parameters": {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64},
        }
    },
)
CHAT = _body(_CHAT_SCHEMA, {"messages": [{"role": "user", "content": "Hello!"}]})

_ENVELOPE = {
    "content": {
        "application/json": {
            "example": {"error": {"message": "...", "type": "...", "code": 401, "param": None}}
        }
    }
}

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, **_ENVELOPE}
    for code, text in {
        400: "malformed or out-of-range input (from the model server)",
        401: "missing or wrong key",
        404: f"no deployment with traffic, or an unknown {DEPLOYMENT_HEADER}",
        408: "request_timeout_ms passed; the generation was stopped",
        413: "body too large",
        424: "the model server failed, or the deployment failed",
        429: "too many requests in flight for the deployment (see Retry-After)",
        503: "the deployment is starting",
    }.items()
}

MODELS: dict[int | str, dict[str, Any]] = {401: ERRORS[401]}
