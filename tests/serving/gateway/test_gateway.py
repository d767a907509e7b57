"""The endpoint gateway in front of fake model servers: keys, traffic, mirror, limits, errors.

The gateway runs with uvicorn in a thread (so a test can `update` its config); each fake
model server is a small FastAPI app in its own process (so it can really die mid-request);
both come from `harness`.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx
import pytest

from chattune.serving.gateway.app import create_gateway
from chattune.serving.gateway.auth import key_digest
from chattune.serving.gateway.config import DeploymentTarget, GatewayConfig
from chattune.serving.gateway.forwarder import _events_end
from chattune.serving.gateway.routing import InFlight
from tests.serving.gateway.harness import (
    PRIMARY,
    SAMPLE,
    SECONDARY,
    Fake,
    Served,
    free_port,
    settles,
    start_fakes,
)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Fake]]:
    """blue, green and shadow: alive for the whole module, reset before each test."""
    started = start_fakes("blue", "green", "shadow")
    try:
        yield started
    finally:
        for fake in started.values():
            fake.stop()


@pytest.fixture
def fresh(fakes: dict[str, Fake]) -> dict[str, Fake]:
    for fake in fakes.values():
        fake.control()
    return fakes


@pytest.fixture
def doomed() -> Iterator[Fake]:
    """A fake for this test only: it is told to die."""
    fake = start_fakes("doomed")["doomed"]
    try:
        yield fake
    finally:
        fake.stop()


def target(name: str, url: str, **settings: Any) -> DeploymentTarget:
    return DeploymentTarget(name=name, instances=(url,), state="ready", **settings)


def config_for(
    fakes: dict[str, Fake],
    traffic: dict[str, int] | None = None,
    *,
    mirror: dict[str, int] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    keys: tuple[str, ...] = (PRIMARY, SECONDARY),
    **fields: Any,
) -> GatewayConfig:
    settings = settings or {}
    return GatewayConfig(
        endpoint="my-endpoint",
        key_digests=tuple(key_digest(k) for k in keys),
        traffic={"blue": 100} if traffic is None else traffic,
        mirror_traffic=mirror or {},
        deployments={n: target(n, f.url, **settings.get(n, {})) for n, f in fakes.items()},
        **fields,
    )


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """serve(config, seed=0) starts a gateway; every one is stopped at the end."""
    started: list[Served] = []

    def start(config: GatewayConfig, seed: int = 0) -> Served:
        served = Served(create_gateway(config, rng=random.Random(seed)))
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.stop()


def with_fake(**behaviour: Any) -> dict[str, Any]:
    return {**SAMPLE, "fake": behaviour}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == response.status_code
    return body["error"]


pytestmark = pytest.mark.integration


# --- open routes, auth, OpenAPI -----------------------------------------------------------


def test_health_and_ready_are_open_and_ready_follows_instances(fresh, serve) -> None:
    gw = serve(config_for(fresh))
    assert gw.get("/health", key=None).json() == {"status": "ok"}
    ready = gw.get("/ready", key=None)
    assert ready.status_code == 200 and ready.json()["deployments"] == ["blue"]

    starting = replace(config_for(fresh), deployments={"blue": DeploymentTarget("blue")})
    gw.gateway.update(starting)
    not_ready = gw.get("/ready", key=None)
    assert not_ready.status_code == 503
    assert "no deployment with traffic has a ready instance" in error_of(not_ready)["message"]
    assert gw.get("/health", key=None).status_code == 200


def test_auth_matrix_and_key_regeneration(fresh, serve, caplog) -> None:
    caplog.set_level("DEBUG")
    gw = serve(config_for(fresh))

    missing = gw.post(key=None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "no key was sent" in error_of(missing)["message"]

    for bad in ("wrong-key", PRIMARY.upper(), PRIMARY[:-1], PRIMARY + "x"):
        r = gw.post(key=bad)
        assert r.status_code == 401, bad
        assert r.headers["www-authenticate"] == "Bearer"
    for header in (f"Basic {PRIMARY}", f"Bearer{PRIMARY}", "Bearer", PRIMARY):
        r = gw.client.post("/score", json=SAMPLE, headers={"Authorization": header})
        assert r.status_code == 401, header
        assert "get-keys my-endpoint" in error_of(r)["message"]

    for scheme in ("Bearer", "bearer", "BEARER"):
        r = gw.client.post("/score", json=SAMPLE, headers={"Authorization": f"{scheme} {PRIMARY}"})
        assert r.status_code == 200, scheme
    assert gw.post(key=SECONDARY).json() == {"output": "blue"}

    for path in ("/v1/models", "/openapi.json", "/swagger.json"):
        assert gw.get(path, key=None).status_code == 401, path
        assert gw.get(path, key="wrong").status_code == 401, path
        assert gw.get(path).status_code == 200, path

    # Regenerating the primary: the old one stops working at once, the secondary goes on.
    new_primary = "pk-" + secrets.token_urlsafe(24)
    gw.gateway.update(config_for(fresh, keys=(new_primary, SECONDARY)))
    assert gw.post(key=PRIMARY).status_code == 401
    assert gw.post(key=new_primary).status_code == 200
    assert gw.post(key=SECONDARY).status_code == 200

    # The key never reaches the model server, nor the logs.
    seen = fresh["blue"].stats()["headers"]
    assert seen and all(h["authorization"] is None for h in seen)
    for key in (PRIMARY, SECONDARY, new_primary):
        assert key not in caplog.text


def test_the_gateway_sends_the_instance_key_and_never_the_clients(fresh, serve) -> None:
    instance_key = "ik-" + secrets.token_urlsafe(24)
    gw = serve(config_for(fresh, settings={"blue": {"instance_key": instance_key}}))
    assert gw.post().status_code == 200
    stream = with_fake(chunks=2)
    assert gw.post("/v1/chat/completions", json=stream).status_code == 200
    seen = fresh["blue"].stats()["headers"]
    assert [h["authorization"] for h in seen] == [f"Bearer {instance_key}"] * 2
    assert instance_key not in repr(gw.gateway.config)


def test_openapi_describes_the_forwarded_routes(fresh, serve) -> None:
    gw = serve(config_for(fresh))
    doc = gw.get("/openapi.json").json()
    assert gw.get("/swagger.json").json() == doc
    assert {"/score", "/v1/chat/completions", "/v1/models"} <= set(doc["paths"])
    score = doc["paths"]["/score"]["post"]
    schema = score["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["input_data"]
    assert {"401", "404", "408", "413", "424", "429"} <= set(score["responses"])
    assert "HTTPBearer" in json.dumps(doc["components"]["securitySchemes"])


def test_v1_models_lists_the_deployments(fresh, serve) -> None:
    gw = serve(config_for(fresh))
    ids = [m["id"] for m in gw.get("/v1/models").json()["data"]]
    assert ids == ["blue", "green", "shadow"]


# --- routing --------------------------------------------------------------------------------


def test_traffic_split_90_10_within_binomial_tolerance(fresh, serve) -> None:
    gw = serve(config_for(fresh, {"blue": 90, "green": 10}), seed=7)
    n = 400
    answered = Counter()
    for _ in range(n):
        r = gw.post()
        assert r.status_code == 200
        assert r.headers["azureml-model-deployment"] == r.json()["output"]
        answered[r.json()["output"]] += 1
    # Binomial(400, 0.9): mean 360, sd 6; 4 sd either side fails a correct split 1 in 16000.
    assert abs(answered["blue"] - 360) <= 24, answered
    assert answered["blue"] + answered["green"] == n
    assert fresh["blue"].stats()["score"] == answered["blue"]
    assert fresh["green"].stats()["score"] == answered["green"]


def test_header_picks_a_deployment_even_with_zero_traffic(fresh, serve) -> None:
    gw = serve(config_for(fresh, {"blue": 100, "green": 0}, mirror={"shadow": 50}))
    for _ in range(10):
        r = gw.post(headers={"azureml-model-deployment": "green"})
        assert r.status_code == 200
        assert r.json() == {"output": "green"}
        assert r.headers["azureml-model-deployment"] == "green"
    assert fresh["blue"].stats()["score"] == 0
    time.sleep(0.2)
    assert fresh["shadow"].stats()["score"] == 0  # header-routed requests are never mirrored

    unknown = gw.post(headers={"azureml-model-deployment": "purple"})
    assert unknown.status_code == 404
    message = error_of(unknown)["message"]
    assert "'purple' not found" in message and "blue, green, shadow" in message


def test_no_deployment_with_traffic_is_404(fresh, serve) -> None:
    for traffic in ({}, {"blue": 0, "green": 0}):
        gw = serve(config_for(fresh, traffic))
        r = gw.post()
        assert r.status_code == 404
        assert "no deployment with traffic" in error_of(r)["message"]


def test_failed_and_starting_deployments(fresh, serve) -> None:
    failed = DeploymentTarget("blue", state="failed", error="CUDA out of memory")
    gw = serve(replace(config_for(fresh), deployments={"blue": failed}))
    r = gw.post()
    assert r.status_code == 424
    assert "CUDA out of memory" in error_of(r)["message"]

    gw.gateway.update(replace(config_for(fresh), deployments={"blue": DeploymentTarget("blue")}))
    r = gw.post()
    assert r.status_code == 503
    assert "is starting" in error_of(r)["message"]


def test_mirror_reaches_the_shadow_without_delaying_the_client(fresh, serve) -> None:
    # The shadow is slow and broken: neither may show in the client's answers. A client that
    # waited on the shadow would wait 2 s; a loaded 2-core CI host can stall a client for a
    # few hundred ms on its own, so the bound sits well between the two.
    fresh["shadow"].control(sleep=2.0, status=500)
    config = config_for(
        fresh,
        {"blue": 100},
        mirror={"shadow": 20},
        settings={"shadow": {"max_concurrent_requests_per_instance": 100}},
    )
    gw = serve(config, seed=3)
    n, slowest = 200, 0.0
    for _ in range(n):
        began = time.monotonic()
        r = gw.post()
        slowest = max(slowest, time.monotonic() - began)
        assert r.status_code == 200 and r.json() == {"output": "blue"}
    assert slowest < 1.5, f"a client waited {slowest:.2f} s on a 2 s shadow"
    assert fresh["blue"].stats()["score"] == n

    end = time.monotonic() + 10
    while time.monotonic() < end:
        stats = fresh["shadow"].stats()
        if len(stats["finished"]) == stats["score"]:
            break
        time.sleep(0.1)
    # Binomial(200, 0.2): mean 40, sd 5.7; 4 sd either side.
    assert abs(stats["score"] - 40) <= 23, stats["score"]


# --- limits and timeouts ------------------------------------------------------------------


def test_timeout_is_408_and_closes_the_upstream_request(fresh, serve) -> None:
    gw = serve(config_for(fresh, settings={"blue": {"request_timeout_ms": 400}}))
    began = time.monotonic()
    r = gw.post(json=with_fake(sleep=5, tag="late"))
    took = time.monotonic() - began
    assert r.status_code == 408
    assert "request_timeout_ms=400" in error_of(r)["message"]
    assert r.headers["azureml-model-deployment"] == "blue"
    assert took < 2.0
    end = time.monotonic() + 3
    while "late" not in fresh["blue"].stats()["disconnected"] and time.monotonic() < end:
        time.sleep(0.05)
    stats = fresh["blue"].stats()
    assert stats["disconnected"] == ["late"] and stats["finished"] == []
    assert 0 < int(stats["headers"][0]["x-chattune-timeout-ms"]) <= 400


def test_client_leaving_closes_the_upstream_request(fresh, serve) -> None:
    gw = serve(config_for(fresh, settings={"blue": {"request_timeout_ms": 10_000}}))
    with pytest.raises(httpx.ReadTimeout):
        gw.post(json=with_fake(sleep=5, tag="left"), timeout=0.3)
    assert settles(lambda: "left" in fresh["blue"].stats()["disconnected"], timeout_s=3)
    assert settles(lambda: gw.gateway.in_flight.deployment("blue") == 0)


def test_body_too_large_is_413(fresh, serve) -> None:
    gw = serve(config_for(fresh, max_body_bytes=1000))
    small = gw.post(
        content=json.dumps(SAMPLE).encode(), headers={"content-type": "application/json"}
    )
    assert small.status_code == 200
    big = {**SAMPLE, "pad": "x" * 2000}
    r = gw.post(json=big)
    assert r.status_code == 413
    assert "limit is 1000" in error_of(r)["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while reading
        data = json.dumps(big).encode()
        for i in range(0, len(data), 256):
            yield data[i : i + 256]

    r = gw.post(json=None, content=chunked())
    assert r.status_code == 413
    assert "at least" in error_of(r)["message"]
    assert fresh["blue"].stats()["score"] == 1


def test_over_the_in_flight_limit_is_429_with_retry_after(fresh, serve) -> None:
    # 1 per instance x 1 instance: 2 in flight at most.
    gw = serve(config_for(fresh, settings={"blue": {"request_timeout_ms": 10_000}}))
    with ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(gw.post, json=with_fake(sleep=1.0)) for _ in range(2)]
        end = time.monotonic() + 5
        while gw.gateway.in_flight.deployment("blue") < 2 and time.monotonic() < end:
            time.sleep(0.01)
        r = gw.post()
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert "already has 2 in flight" in error_of(r)["message"]
        assert [f.result().status_code for f in slow] == [200, 200]
    assert gw.post().status_code == 200
    assert gw.gateway.in_flight.deployment("blue") == 0


# --- upstream failures --------------------------------------------------------------------


def test_upstream_500_is_424_and_4xx_passes_through(fresh, serve) -> None:
    gw = serve(config_for(fresh))
    r = gw.post(json=with_fake(status=500))
    assert r.status_code == 424
    message = error_of(r)["message"]
    assert "the model server failed" in message and "blue broke" in message
    r = gw.post(json=with_fake(status=400))
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "blue broke", "type": "x", "code": 400, "param": None}}
    assert r.headers["azureml-model-deployment"] == "blue"


def test_upstream_death_and_refusal_are_424(fresh, doomed, serve) -> None:
    dead_port = f"http://127.0.0.1:{free_port()}"
    deployments = {
        "doomed": target("doomed", doomed.url),
        "gone": target("gone", dead_port),
        "half": DeploymentTarget("half", instances=(dead_port, fresh["blue"].url), state="ready"),
    }
    gw = serve(replace(config_for(fresh), traffic={"doomed": 100}, deployments=deployments))

    r = gw.post(json=with_fake(die="before"))
    assert r.status_code == 424
    assert "the model server failed: deployment 'doomed'" in error_of(r)["message"]

    r = gw.post(headers={"azureml-model-deployment": "gone"})
    assert r.status_code == 424
    assert "deployment 'gone'" in error_of(r)["message"]

    # A refused connection never reached the instance: the next instance takes it.
    for _ in range(4):
        r = gw.post(headers={"azureml-model-deployment": "half"})
        assert r.status_code == 200 and r.json() == {"output": "blue"}


# --- streaming ----------------------------------------------------------------------------


def stream_events(gw: Served, body: dict[str, Any]) -> tuple[list[tuple[float, str]], float]:
    """(seconds after the request, line) for each non-empty SSE line, and the total time."""
    began = time.monotonic()
    lines = []
    headers = {"Authorization": f"Bearer {PRIMARY}"}
    with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                lines.append((time.monotonic() - began, line))
    return lines, time.monotonic() - began


def test_sse_is_relayed_as_it_arrives(fresh, serve) -> None:
    gw = serve(config_for(fresh))
    body = {"messages": [], "stream": True, "fake": {"chunks": 5, "chunk_delay": 0.3}}
    lines, total = stream_events(gw, body)
    assert [line for _, line in lines] == [
        *(f'data: {{"i": {i}, "name": "blue"}}' for i in range(5)),
        "data: [DONE]",
    ]
    assert total >= 1.4
    assert lines[0][0] < 0.7, "the first event waited for the stream to end"
    assert settles(lambda: gw.gateway.in_flight.deployment("blue") == 0)


def test_client_leaving_mid_stream_closes_the_upstream_stream(fresh, serve) -> None:
    gw = serve(config_for(fresh))
    body = {
        "messages": [],
        "stream": True,
        "fake": {"chunks": 6, "chunk_delay": 0.2, "tag": "gone"},
    }
    headers = {"Authorization": f"Bearer {PRIMARY}"}
    with gw.client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        first = next(r.iter_lines())
    assert first == 'data: {"i": 0, "name": "blue"}'
    assert settles(lambda: gw.gateway.in_flight.deployment("blue") == 0)
    time.sleep(1.5)  # past the end the stream would have had
    stats = fresh["blue"].stats()
    assert stats["chat"] == 1 and stats["finished"] == []


def test_death_mid_stream_ends_with_an_sse_error_event(fresh, doomed, serve) -> None:
    config = replace(
        config_for(fresh),
        traffic={"doomed": 100},
        deployments={"doomed": target("doomed", doomed.url)},
    )
    gw = serve(config)
    body = {
        "messages": [],
        "stream": True,
        "fake": {"chunks": 5, "chunk_delay": 0.1, "die_after": 2},
    }
    lines, _ = stream_events(gw, body)
    text = [line for _, line in lines]
    assert text[:2] == ['data: {"i": 0, "name": "doomed"}', 'data: {"i": 1, "name": "doomed"}']
    assert text[2] == "event: error"
    error = json.loads(text[3].removeprefix("data: "))["error"]
    assert error["code"] == 424 and "deployment 'doomed'" in error["message"]
    assert len(text) == 4
    assert settles(lambda: gw.gateway.in_flight.deployment("doomed") == 0)


# --- units ----------------------------------------------------------------------------------


def test_least_in_flight_instance_with_round_robin_on_ties() -> None:
    dep = DeploymentTarget("d", instances=("a", "b", "c"), instance_count=3, state="ready")
    in_flight = InFlight()
    idle = [in_flight.reserve(dep) for _ in range(3)]
    assert [s.next_instance() for s in idle] == ["a", "b", "c"]
    idle[1].release()  # b is now the least busy
    s = in_flight.reserve(dep)
    assert s.next_instance() == "b"
    for slot in (*idle, s):
        slot.release()
    assert in_flight.deployment("d") == 0
    turns = []
    for _ in range(6):  # all idle: take turns
        slot = in_flight.reserve(dep)
        turns.append(slot.next_instance())
        slot.release()
    assert sorted(Counter(turns).values()) == [2, 2, 2]


def test_events_end_cuts_after_the_last_whole_event() -> None:
    assert _events_end(b"data: 1") == 0
    assert _events_end(b"data: 1\n\ndata: 2") == len(b"data: 1\n\n")
    assert _events_end(b"data: 1\r\n\r\ndata: 2\r\n\r\n") == len(b"data: 1\r\n\r\ndata: 2\r\n\r\n")
