"""The one error channel: every domain error, raised in the engine (its API and its thread),
in the model server's service or in the gateway's forwarder, leaves as its documented status
code and the envelope, never as a 500; anything unexpected is a 500 and the server goes on."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from chattune import errors as E
from chattune.serving.gateway.app import create_gateway
from chattune.serving.gateway.auth import key_digest
from chattune.serving.gateway.config import DeploymentTarget, GatewayConfig
from chattune.serving.gateway.forwarder import Forwarder
from chattune.serving.http_errors import ERROR_TYPES
from chattune.serving.model_server.app import create_app
from chattune.serving.model_server.engine import Engine
from chattune.serving.model_server.loading import load_engine
from chattune.serving.model_server.service import ModelService

# the documented status of each domain error (serving/http_errors.py, DESIGN.md)
DOCUMENTED = [
    (E.ChattuneError("refused."), 400),
    (E.WorkspaceError("the workspace is locked."), 400),
    (E.InvalidParameter("bad value."), 400),
    (E.InvalidRequest("bad field.", param="messages"), 400),
    (E.AuthenticationFailed("no key was sent."), 401),
    (E.RouteNotFound("no such deployment.", param="azureml-model-deployment"), 404),
    (E.EndpointNotFound("no such endpoint."), 404),
    (E.DeploymentNotFound("no such deployment."), 404),
    (E.ModelNotFound("no such model."), 404),
    (E.RequestTimeout("too slow.", deployment="blue"), 408),
    (E.RequestTooLarge("too big."), 413),
    (E.UpstreamFailed("the model server died.", deployment="blue"), 424),
    (E.DeploymentFailed("it failed."), 424),
    (E.TooManyRequests("busy.", retry_after_s=1), 429),
    (E.ClientDisconnected("gone."), 499),
    (E.ServiceUnavailable("loading.", retry_after_s=10), 503),
]
IDS = [type(exc).__name__ for exc, _ in DOCUMENTED]
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def check(r: httpx.Response, exc: E.ChattuneError, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.json() == {
        "error": {
            "message": str(exc),
            "type": ERROR_TYPES.get(status, "error"),
            "code": status,
            "param": getattr(exc, "param", None),
        }
    }
    retry = getattr(exc, "retry_after_s", None)
    assert r.headers.get("retry-after") == (str(retry) if retry is not None else None)
    deployment = getattr(exc, "deployment", None)
    assert r.headers.get("azureml-model-deployment") == deployment


def post_twice(app, path: str, body: dict, headers: dict | None = None):
    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = await c.post(path, json=body, headers=headers)
            return first, await c.post(path, json=body, headers=headers)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def engine(chatty_llama_dir):
    engine, _ = load_engine(chatty_llama_dir, {}, 4)
    yield engine
    engine.stop()


def raise_once(exc: BaseException, real):
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return real(*a, **kw)

    return flaky


@pytest.mark.parametrize(("exc", "status"), DOCUMENTED, ids=IDS)
@pytest.mark.parametrize("where", ["engine_thread", "engine_submit", "service"])
def test_model_server_maps_each_domain_error_once(engine: Engine, monkeypatch, where, exc, status):
    if where == "engine_thread":  # raised by a decoding step, on the engine's own thread
        monkeypatch.setattr(engine, "_forward", raise_once(exc, engine._forward))
    elif where == "engine_submit":
        monkeypatch.setattr(engine, "submit", raise_once(exc, engine.submit))
    else:
        monkeypatch.setattr(ModelService, "chat", raise_once(exc, ModelService.chat))
    bad, good = post_twice(
        create_app(engine=engine, served_name="tiny"), "/v1/chat/completions", CHAT
    )
    check(bad, exc, status)
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 3


def test_model_server_unexpected_error_is_a_500_with_the_envelope(engine: Engine, monkeypatch):
    monkeypatch.setattr(ModelService, "score", raise_once(KeyError("oops"), ModelService.score))
    body = {"input_data": {"input_string": CHAT["messages"], "parameters": {"max_new_tokens": 2}}}
    bad, good = post_twice(create_app(engine=engine, served_name="tiny"), "/score", body)
    assert bad.status_code == 500
    assert bad.json()["error"] == {
        "message": "internal error: KeyError: 'oops'", "type": "server_error", "code": 500,
        "param": None,
    }  # fmt: skip
    assert good.status_code == 200 and isinstance(good.json()["output"], str)


def test_a_domain_error_mid_stream_ends_it_with_its_envelope(engine: Engine, monkeypatch):
    exc = E.ServiceUnavailable("the engine is stopped.")
    monkeypatch.setattr(engine, "_forward", raise_once(exc, engine._forward))
    app = create_app(engine=engine, served_name="tiny")
    (bad, _) = post_twice(app, "/v1/chat/completions", {**CHAT, "stream": True})
    assert bad.status_code == 200  # sent before the error
    last = bad.text.strip().splitlines()[-1]
    assert last == 'data: {"error": {"message": "the engine is stopped.", "type": ' \
        '"service_unavailable", "code": 503, "param": null}}'  # fmt: skip


KEY = "k" * 20
TARGET = DeploymentTarget("blue", instances=("http://127.0.0.1:9",), state="ready")


@pytest.mark.parametrize(("exc", "status"), DOCUMENTED, ids=IDS)
def test_gateway_maps_each_domain_error_once(monkeypatch, exc, status):
    async def forward(self, request, route, body):
        raise exc

    monkeypatch.setattr(Forwarder, "forward", forward)
    config = GatewayConfig(
        "ep", key_digests=(key_digest(KEY),), traffic={"blue": 100}, deployments={"blue": TARGET}
    )
    gateway = create_gateway(config, rng=random.Random(0))
    auth = {"Authorization": f"Bearer {KEY}"}
    score = {"input_data": {"input_string": CHAT["messages"]}}  # valid: the gateway parses it
    bad, _ = post_twice(gateway.app, "/score", score, auth)
    check(bad, exc, status)
    assert status != 500
