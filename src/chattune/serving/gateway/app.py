"""The gateway of one online endpoint: keys, traffic, mirror, limits, timeouts, forwarding.

An ASGI app (FastAPI) that the supervisor runs with uvicorn on the endpoint's port, in front
of the model-server instances of the endpoint's deployments. Laid out the
fastapi-best-practices way: the dependencies `valid_key` → `limited_body` → `score_body` or
`chat_body` → `route_score` or `route_chat` validate and load (the key, the body's size,
the body parsed by the model server's own wire models, so a malformed request is a 400
before it takes an in-flight slot; the deployment), one service (`Forwarder`, in
`forwarder.py`) forwards the body's bytes as they came, and every error is a
`chattune.errors` domain error mapped once by `http_errors`.

    gateway = create_gateway(config)
    uvicorn.run(gateway.app, port=port)   # the supervisor calls gateway.update(new) as
                                          # keys, traffic or instance health change
"""

from __future__ import annotations

import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from chattune.errors import RequestTooLarge, ServiceUnavailable
from chattune.serving.bodies import document_bodies, parse_body
from chattune.serving.gateway import openapi as docs
from chattune.serving.gateway.auth import valid_key
from chattune.serving.gateway.config import GatewayConfig, current_config
from chattune.serving.gateway.forwarder import Forwarder
from chattune.serving.gateway.routing import (
    RETRY_AFTER_STARTING_S,
    InFlight,
    Route,
    check_serving,
    choose_route,
)
from chattune.serving.headers import DEPLOYMENT_HEADER
from chattune.serving.http_errors import install_error_handlers
from chattune.serving.model_server.schemas import (
    ChatCompletionRequest,
    ModelList,
    ReadyReply,
    ScoreRequest,
    StatusReply,
)


class Gateway:
    """One endpoint's gateway: `app` to serve, `update` to swap its config.

    Args:
        config: the first config.
        rng: the source of the traffic and mirror draws (seed it for reproducible tests).
    """

    def __init__(self, config: GatewayConfig, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config
        self.rng = rng or random.Random()
        self.in_flight = InFlight()
        self.forwarder = Forwarder(self.in_flight)
        self.app = _build_app(self)

    @property
    def config(self) -> GatewayConfig:
        """The config in force now."""
        with self._lock:
            return self._config

    def update(self, config: GatewayConfig) -> None:
        """Swap in a new config, from any thread; requests in flight finish on the old one."""
        with self._lock:
            self._config = config


def create_gateway(config: GatewayConfig, *, rng: random.Random | None = None) -> Gateway:
    """Build the gateway of one endpoint.

    Args:
        config: keys, traffic, mirror and deployments to route by.
        rng: the random source of the traffic split and mirror draws.

    Returns:
        The gateway; serve `gateway.app` with uvicorn, call `gateway.update(config)` on changes.
    """
    return Gateway(config, rng)


# --- dependencies -------------------------------------------------------------------------
# All `async def`: they run on the event loop, where the in-flight counts live, instead of
# hopping to FastAPI's thread pool as plain `def` dependencies would.


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def limited_body(
    request: Request,
    config: GatewayConfig = Depends(current_config),
    _key: None = Depends(valid_key),
) -> bytes:
    """The request body, refused past `config.max_body_bytes`: by its declared
    Content-Length first, then by counting while reading (chunked bodies declare none).

    Raises:
        RequestTooLarge: over the limit (413).
    """
    limit = config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    size, parts = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, at_least=True)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(size: int, limit: int, *, at_least: bool = False) -> RequestTooLarge:
    more = "at least " if at_least else ""
    return RequestTooLarge(
        f"request body too large: {more}{size} bytes, the limit is {limit}.",
        fix="send fewer or shorter messages in one request.",
    )


async def score_body(body: bytes = Depends(limited_body)) -> ScoreRequest:
    """The `/score` body, parsed (`bodies.parse_body`: 400 naming the field)."""
    return parse_body(ScoreRequest, body)


async def chat_body(body: bytes = Depends(limited_body)) -> ChatCompletionRequest:
    """The chat-completion body, parsed (`bodies.parse_body`: 400 naming the field)."""
    return parse_body(ChatCompletionRequest, body)


def _route(request: Request, config: GatewayConfig, model: str | None) -> Route:
    """Pick the deployment (header, `model`, or traffic split) and check that it can answer
    now.

    Raises:
        RouteNotFound: unknown deployment or `model`, or no traffic (404).
        InvalidRequest: the header and `model` disagree (400).
        UpstreamFailed: the deployment failed (424).
        ServiceUnavailable: it has no ready instance (503).
    """
    header = request.headers.get(DEPLOYMENT_HEADER)
    route = choose_route(config, header, _gateway(request).rng, model)
    check_serving(route.target)
    return route


async def route_score(
    request: Request,
    config: GatewayConfig = Depends(current_config),
    _body: ScoreRequest = Depends(score_body),
) -> Route:
    """Where a `/score` request goes (see `_route`)."""
    return _route(request, config, None)


async def route_chat(
    request: Request,
    config: GatewayConfig = Depends(current_config),
    chat: ChatCompletionRequest = Depends(chat_body),
) -> Route:
    """Where a chat completion goes: its `model` may name the deployment (see `_route`)."""
    return _route(request, config, chat.model)


async def forwarder(request: Request) -> Forwarder:
    """The gateway's forwarding service."""
    return _gateway(request).forwarder


# --- routes -------------------------------------------------------------------------------

open_router = APIRouter(tags=["health"])
router = APIRouter(dependencies=[Depends(valid_key)])


@open_router.get("/health", summary="The gateway is alive")
async def health() -> StatusReply:
    return StatusReply(status="ok")


@open_router.get(
    "/ready",
    summary="Some deployment with traffic has a ready instance",
    responses={503: docs.ERRORS[503]},
)
async def ready(config: GatewayConfig = Depends(current_config)) -> ReadyReply:
    serving = [
        name
        for name, pct in config.traffic.items()
        if pct > 0 and name in config.deployments and config.deployments[name].instances
    ]
    if not serving:
        raise ServiceUnavailable(
            f"endpoint '{config.endpoint}' is not ready: no deployment with traffic has a "
            "ready instance yet.",
            retry_after_s=RETRY_AFTER_STARTING_S,
        )
    return ReadyReply(status="ready", deployments=serving)


@router.post("/score", tags=["scoring"], openapi_extra=docs.SCORE, responses=docs.SCORE_ANSWERS)
async def score(
    request: Request,
    route: Route = Depends(route_score),
    body: bytes = Depends(limited_body),
    service: Forwarder = Depends(forwarder),
) -> Response:
    """The seed's scoring API: `{"input_data": {"input_string": [...], "parameters": {}}}`."""
    return await service.forward(request, route, body)


@router.post(
    "/v1/chat/completions", tags=["openai"], openapi_extra=docs.CHAT, responses=docs.CHAT_ANSWERS
)
async def chat_completions(
    request: Request,
    route: Route = Depends(route_chat),
    body: bytes = Depends(limited_body),
    service: Forwarder = Depends(forwarder),
) -> Response:
    """OpenAI chat completions; `stream: true` answers with server-sent events."""
    return await service.forward(request, route, body)


@router.get("/v1/models", tags=["openai"], responses=docs.MODELS)
async def models(config: GatewayConfig = Depends(current_config)) -> ModelList:
    """One model per deployment of the endpoint (its name is the deployment name)."""
    return ModelList.of(sorted(config.deployments), owned_by=config.endpoint)


@router.get("/openapi.json", include_in_schema=False)
@router.get("/swagger.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document (`/swagger.json` is the path Azure prints as `openapi_uri`)."""
    return JSONResponse(request.app.openapi())


def _build_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gateway.forwarder.start()
        try:
            yield
        finally:
            await gateway.forwarder.stop()

    app = FastAPI(
        title=f"chattune endpoint {gateway.config.endpoint}",
        version="1",
        description=docs.DESCRIPTION,
        lifespan=lifespan,
        # The document needs the key like every other route, so FastAPI's open routes for
        # it (and the docs pages that fetch it without a key) are off; `openapi` serves it.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    app.include_router(open_router)
    app.include_router(router)
    document_bodies(app, ScoreRequest, ChatCompletionRequest)
    return app
