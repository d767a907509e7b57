"""The one HTTP error envelope of chattune's servers (model server and gateway).

Every error leaves as `{"error": {"message", "type", "code", "param"}}` (OpenAI's shape, so
the `openai` client shows the message), with `code` the HTTP status. Services raise
`HTTPProblem`; `install_error_handlers` maps it, FastAPI's validation errors (400, not 422:
a malformed body is a bad request to Azure and OpenAI alike) and anything unexpected (500,
logged, never crashing the server) once, at the edge.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("chattune.serving")

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


class HTTPProblem(Exception):
    """An error answered with `status` and the envelope.

    Args:
        status: the HTTP status code.
        message: what went wrong and how to fix it, naming the field.
        param: the request field at fault, if any.
        headers: extra response headers (`Retry-After` on 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


def envelope(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "error"),
            "code": status,
            "param": param,
        }
    }


def problem_response(exc: HTTPProblem) -> JSONResponse:
    return JSONResponse(
        envelope(exc.status, exc.message, exc.param), status_code=exc.status, headers=exc.headers
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        param = param or where
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request body: " + "; ".join(parts), param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` with the envelope."""

    @app.exception_handler(HTTPProblem)
    async def _problem(_req: Request, exc: HTTPProblem) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return problem_response(HTTPProblem(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(
            HTTPProblem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while answering a request")
        return problem_response(HTTPProblem(500, f"internal error: {type(exc).__name__}: {exc}"))
