"""The model server answers only whoever holds its key: the endpoint's gateway, or the user
who started it by hand (`serving/keys.py`).

An ASGI middleware rather than a route dependency, so that every route (the OpenAPI pages
and routes added later included) is closed unless listed in `PROBE_PATHS`; pure ASGI, so
a streamed answer and the gateway's disconnect (how a timed-out generation stops) pass
through untouched.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from chattune.errors import AuthenticationFailed
from chattune.serving.headers import INSTANCE_AUTH_HEADER
from chattune.serving.http_errors import error_response
from chattune.serving.keys import INSTANCE_KEY_ENV, bearer_matches

# The supervisor's liveness and readiness probes: open, they say nothing but "up" and "ready".
PROBE_PATHS = frozenset({"/health", "/ready"})


class InstanceKeyCheck:
    """ASGI middleware: a request to any path but `PROBE_PATHS` needs
    `Authorization: Bearer <key>`, compared in constant time; else 401."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        if not key:
            raise ValueError("the model server's key is empty")
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if bearer_matches(Headers(scope=scope).get(INSTANCE_AUTH_HEADER), self.key):
            await self.app(scope, receive, send)
            return
        refused = AuthenticationFailed(
            "this model server answers only its endpoint's gateway (or whoever started it "
            "with its key): the request has no valid `Authorization: Bearer <key>`.",
            fix="send requests to the endpoint's scoring_uri with an endpoint key "
            "(`chattune endpoint show NAME`, `chattune endpoint get-keys NAME`); a model "
            f"server started by hand takes its key from ${INSTANCE_KEY_ENV}.",
        )
        await error_response(refused)(scope, receive, send)
