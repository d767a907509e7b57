"""What the gateway refuses before forwarding, and how `model` routes: bodies parsed once
here with a depth limit (400 naming it, the connection goes on), an unknown `model` 404
listing the valid names. (A malformed request over the in-flight limit is 400, not 429:
test_gateway's 429 test.)"""

from __future__ import annotations

import json

import pytest

from tests.serving.gateway.harness import (
    HI,
    PRIMARY,
    SAMPLE,
    config_for,
    error_of,
)

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_bodies_are_400_naming_the_limit_and_the_connection_goes_on(fresh, serve, depth):
    # Before: forwarded, the model server hit RecursionError (500, so 424), and a valid
    # request after it on the same connection sometimes got 424 too.
    gw = serve(config_for(fresh))
    nested = "[" * depth + "]" * depth
    for path, valid in (("/score", SAMPLE), ("/v1/chat/completions", {"messages": HI})):
        deep = ('{"input_data": {"input_string": ' + nested + "}}").encode()
        r = gw.post(path, json=None, content=deep, headers=JSON)
        assert r.status_code == 400, r.text
        error = error_of(r)
        assert f"{depth + 2} levels deep; the limit is 64" in error["message"]
        assert error["param"] == "body"
        after = gw.post(path, json=valid)  # the same kept-alive client
        assert after.status_code == 200, after.text
    stats = fresh["blue"].stats()
    assert (stats["score"], stats["chat"]) == (1, 1)  # only the valid ones reached it


def test_model_routes_to_its_deployment_and_an_unknown_one_is_404(fresh, serve):
    config = config_for(
        fresh, {"blue": 100, "green": 0}, settings={"shadow": {"adapter": "lora-a"}}
    )
    gw = serve(config)

    def ask(model: str | None, **headers: str):
        body = {"messages": HI} if model is None else {"messages": HI, "model": model}
        return gw.post("/v1/chat/completions", json=body, headers=headers)

    for model, answered in ((None, "blue"), ("my-endpoint", "blue"), ("green", "green"),
                            ("lora-a", "shadow")):  # fmt: skip
        r = ask(model)
        assert r.status_code == 200 and r.json() == {"output": answered}, (model, r.text)
        assert r.headers["azureml-model-deployment"] == answered

    for unknown in ("gpt-4o", "", "blue "):
        r = ask(unknown)
        assert r.status_code == 404, unknown
        error = error_of(r)
        assert error["param"] == "model" and f"model '{unknown}' not found" in error["message"]
        assert "blue, green, lora-a, shadow" in error["message"]
        assert "'my-endpoint'" in error["message"]

    picked = ask("my-endpoint", **{"azureml-model-deployment": "green"})
    assert picked.json() == {"output": "green"}
    clash = ask("blue", **{"azureml-model-deployment": "green"})
    assert clash.status_code == 400 and error_of(clash)["param"] == "model"
    assert "'green'" in error_of(clash)["message"]
    stats = {name: fake.stats()["chat"] for name, fake in fresh.items()}
    assert stats == {"blue": 2, "green": 2, "shadow": 1}  # the refused never left the gateway


def test_error_hints_point_at_the_document_the_gateway_serves(fresh, serve):
    gw = serve(config_for(fresh))
    r = gw.post("/v1/chat/completions", json={"messages": HI, "temperature": "hot"})
    message = error_of(r)["message"]
    assert r.status_code == 400 and "`temperature`" in message
    assert "GET /openapi.json" in message and "/docs" not in message
    assert gw.get("/openapi.json").status_code == 200
    doc = gw.get("/openapi.json").json()
    unsupported = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert json.dumps(unsupported["tools"]).count('"maxItems": 0') == 1
    assert gw.get("/openapi.json", key=None).status_code == 401
    assert PRIMARY not in json.dumps(doc)
