"""The one error channel of chattune's HTTP servers (gateway and model server).

Services raise `ChattuneError` subclasses (`chattune.errors`); `install_error_handlers` maps
them here, once, to a status code (`STATUS`, looked up along the class's bases) and the
envelope `{"error": {"message", "type", "code", "param"}}` (OpenAI's shape, so the `openai`
client shows the message), with `code` the HTTP status. FastAPI's validation errors are 400
(not 422: a malformed body is a bad request to Azure and OpenAI alike); anything unexpected is
500, logged, and never ends the server.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chattune.errors import (
    AuthenticationFailed,
    ChattuneError,
    ClientDisconnected,
    DeploymentFailed,
    DeploymentNotFound,
    EndpointNotFound,
    EngineError,
    InvalidParameter,
    InvalidRequest,
    ModelNotFound,
    RequestError,
    RequestTimeout,
    RequestTooLarge,
    RouteNotFound,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamFailed,
)
from chattune.serving.headers import DEPLOYMENT_HEADER

log = logging.getLogger("chattune.serving")

# domain error -> HTTP status; the nearest class along an error's bases decides
STATUS: dict[type[ChattuneError], int] = {
    ChattuneError: 400,  # a refusal whose message names the cause and the fix
    InvalidRequest: 400,
    InvalidParameter: 400,
    AuthenticationFailed: 401,
    RouteNotFound: 404,
    EndpointNotFound: 404,
    DeploymentNotFound: 404,
    ModelNotFound: 404,
    RequestTimeout: 408,
    RequestTooLarge: 413,
    UpstreamFailed: 424,
    DeploymentFailed: 424,
    TooManyRequests: 429,
    ClientDisconnected: 499,  # nginx's "client closed request": nobody receives it
    ServiceUnavailable: 503,
    EngineError: 500,  # wraps an unexpected exception of the engine thread: a server error
}

# status -> OpenAI-style error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    424: "failed_dependency",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


# the envelope as the OpenAPI documents state it
ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": "integer"},
                "param": {"type": ["string", "null"], "description": "the field or header"},
            },
        }
    },
}


def documented(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's OpenAPI `responses` for these error statuses: each its description and the
    envelope."""
    content = {"application/json": {"schema": ENVELOPE_SCHEMA}}
    return {
        status: {"description": text, "content": content} for status, text in descriptions.items()
    }


def status_of(exc: ChattuneError) -> int:
    """The HTTP status of a domain error (`STATUS` of its nearest listed class)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    raise AssertionError("unreachable: ChattuneError is in STATUS")


def envelope(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """The error body every chattune server answers with."""
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "error"),
            "code": status,
            "param": param,
        }
    }


def envelope_of(exc: ChattuneError) -> dict[str, Any]:
    """The envelope of a domain error (what a stream sends as its last event)."""
    param = exc.param if isinstance(exc, RequestError) else None
    return envelope(status_of(exc), str(exc), param)


def envelope_for(exc: BaseException) -> dict[str, Any]:
    """The envelope of any exception: a domain error's, or a 500 for anything unexpected
    (what a stream sends as its last event once its 200 status is gone)."""
    if isinstance(exc, ChattuneError):
        return envelope_of(exc)
    return envelope(500, f"internal error: {type(exc).__name__}: {exc}")


def headers_of(exc: ChattuneError) -> dict[str, str]:
    """The response headers a domain error carries: `Retry-After`, the deployment's name,
    and `WWW-Authenticate` on 401."""
    headers: dict[str, str] = {}
    if isinstance(exc, RequestError):
        if exc.deployment is not None:
            headers[DEPLOYMENT_HEADER] = exc.deployment
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, AuthenticationFailed):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_response(exc: ChattuneError) -> JSONResponse:
    """The response of a domain error: its status, envelope and headers."""
    return JSONResponse(envelope_of(exc), status_code=status_of(exc), headers=headers_of(exc))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request body: " + "; ".join(parts), param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` with the envelope: domain errors by `STATUS`, FastAPI's
    validation errors 400, Starlette's (unknown path, wrong method) with their status, and
    anything else 500 (logged; the server goes on)."""

    @app.exception_handler(ChattuneError)
    async def _domain(_req: Request, exc: ChattuneError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(envelope(400, message, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            envelope(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    app.add_middleware(_Unexpected)


class _Unexpected:
    """ASGI middleware: an exception that escapes every handler becomes the 500 envelope,
    logged, and is not raised on (Starlette's own `Exception` handler re-raises it to the
    server after answering). Once a response has started it can only be logged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            log.exception("unexpected error while answering a request")
            if not started:
                await JSONResponse(envelope_for(exc), status_code=500)(scope, receive, send)
