"""The model server's routes: thin, each reads its request and hands it to `ModelService`.

The key check is `auth.py`, in front of every route but `/health` and `/ready`. Request headers
from the gateway (`serving/headers.py`): `TIMEOUT_HEADER` (the request's remaining budget:
past it the generation is cancelled and the answer is 408) and `ADAPTER_HEADER` (the LoRA
adapter; unknown names are a 400 listing the loaded ones).

`/score` answers `{"output": "text"}` for one conversation (a flat `input_string` of messages,
or a list holding one conversation, as the seed sends) and `{"output": ["text", ...]}`, one
per conversation and in order, for several; the conversations are generated in one batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from chattune.serving.model_server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ModelList,
    ScoreRequest,
    ScoreResponse,
    StatusReply,
    parse_body,
)
from chattune.serving.model_server.service import Call, ModelService


def model_service(request: Request) -> ModelService:
    """Dependency: the app's service."""
    return request.app.state.service


health_router = APIRouter(tags=["health"])
scoring_router = APIRouter(tags=["scoring"])
openai_router = APIRouter(prefix="/v1", tags=["openai"])


@health_router.get("/health", summary="The process and its engine thread live")
def health(service: ModelService = Depends(model_service)) -> StatusReply:
    service.check_alive()
    return StatusReply(status="ok")


@health_router.get("/ready", summary="The model is loaded")
def ready(service: ModelService = Depends(model_service)) -> StatusReply:
    service.check_ready()
    return StatusReply(status="ready")


@health_router.get("/stats", summary="What was loaded, and the engine's counters")
def stats(service: ModelService = Depends(model_service)) -> dict[str, Any]:
    return service.stats()


@scoring_router.post("/score")
async def score(request: Request, service: ModelService = Depends(model_service)) -> ScoreResponse:
    """The seed's scoring API: `{"input_data": {"input_string": [...], "parameters": {}}}`."""
    call = Call.of(request)
    return await service.score(parse_body(ScoreRequest, await request.body()), call)


@openai_router.get("/models")
def models(service: ModelService = Depends(model_service)) -> ModelList:
    return service.models()


@openai_router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request, service: ModelService = Depends(model_service)
) -> ChatCompletion | StreamingResponse:
    """OpenAI chat completions; `stream: true` answers with server-sent events."""
    call = Call.of(request)
    answer = await service.chat(parse_body(ChatCompletionRequest, await request.body()), call)
    if isinstance(answer, AsyncIterator):
        return StreamingResponse(answer, media_type="text/event-stream")
    return answer


ROUTERS = (health_router, scoring_router, openai_router)
