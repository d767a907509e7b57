"""What the gateway's OpenAPI document says about the bodies it forwards.

The gateway reads bodies as bytes (it must count them for the 413 limit and forwards them
as they came), so FastAPI cannot derive their schemas from parameters: `bodies.body_doc`
points them at the model server's own wire models (`model_server.schemas`), which the
gateway parses them with, so the document says exactly what both servers accept.
"""

from __future__ import annotations

from typing import Any

from chattune.serving.bodies import CHAT_ANSWER, SCORE_ANSWER, body_doc
from chattune.serving.headers import DEPLOYMENT_HEADER
from chattune.serving.http_errors import documented
from chattune.serving.model_server.schemas import ChatCompletionRequest, ScoreRequest

DESCRIPTION = (
    "An online endpoint. Every route except `/health` and `/ready` needs "
    f"`Authorization: Bearer <key>`. The header `{DEPLOYMENT_HEADER}: NAME` picks a "
    "deployment and bypasses the traffic split, as does a chat request's `model` naming one; "
    "every answer names the deployment that gave it in the same header. Fields the servers "
    "cannot honour are refused with 400 naming them, never ignored."
)

_PICK = {
    "parameters": [
        {
            "name": DEPLOYMENT_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "the deployment to answer, bypassing the traffic split",
        }
    ]
}


def _with_header(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, **_PICK}


SCORE = _with_header(
    body_doc(
        ScoreRequest,
        {
            "input_data": {
                "input_string": [[{"role": "user", "content": "What is the tallest mountain?"}]],
                "parameters": {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64},
            }
        },
    )
)
CHAT = _with_header(
    body_doc(ChatCompletionRequest, {"messages": [{"role": "user", "content": "Hello!"}]})
)

ERRORS = documented(
    {
        400: "malformed, unsupported or out-of-range input, naming the field (a prompt or "
        "a token budget over the model's context is refused by the model server)",
        401: "missing or wrong key",
        404: f"no deployment with traffic, or an unknown {DEPLOYMENT_HEADER} or `model` "
        "(the message lists the valid names)",
        408: "request_timeout_ms passed; the generation was stopped",
        413: "body too large",
        424: "the model server failed, or the deployment failed",
        429: "too many requests in flight for the deployment (see Retry-After)",
        503: "the deployment has no ready instance (starting, or one is restarting)",
    }
)
SCORE_ANSWERS = {**SCORE_ANSWER, **ERRORS}
CHAT_ANSWERS = {**CHAT_ANSWER, **ERRORS}

MODELS: dict[int | str, dict[str, Any]] = {401: ERRORS[401]}
