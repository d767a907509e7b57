"""The model server answers only whoever holds its key: every route but the probes is 401
without `Authorization: Bearer <key>` (the app in-process; no model is loaded, so routes
past the check answer 503 "loading the model")."""

from __future__ import annotations

import asyncio
import logging
import os

import httpx
import pytest

from chattune.serving.keys import INSTANCE_KEY_ENV
from chattune.serving.model_server import cli
from chattune.serving.model_server.app import create_app

KEY = "instance-key-for-tests"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def request(method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request to a fresh app whose key is `KEY`."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(served_name="tiny", api_key=KEY))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.request(method, path, headers=headers or {}, json=CHAT)

    return asyncio.run(send())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/score"),
        ("GET", "/v1/models"),
        ("GET", "/stats"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/no-such-route"),
    ],
)
def test_every_route_but_the_probes_needs_the_key(method: str, path: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"Authorization": f"Bearer {KEY}x"},
    ):
        r = request(method, path, headers)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert error["code"] == 401 and error["type"] == "authentication_error"
        assert "answers only its endpoint's gateway" in error["message"]
        assert INSTANCE_KEY_ENV in error["message"]  # the fix, for a server started by hand
    for scheme in ("Bearer", "bearer"):
        r = request(method, path, {"Authorization": f"{scheme} {KEY}"})
        assert r.status_code != 401, (path, r.text)


def test_the_probes_are_open() -> None:
    assert request("GET", "/health").status_code == 200
    r = request("GET", "/ready")
    assert r.status_code == 503 and "loading the model" in r.text  # past the check: no model


def test_the_command_line_takes_the_key_from_the_environment(monkeypatch, caplog) -> None:
    seen: dict[str, object] = {}

    def fake_create_app(model_dir, **kw):
        seen.update(kw)
        raise SystemExit(0)  # parsed; do not serve

    monkeypatch.setattr(cli, "create_app", fake_create_app)
    args = ["--model-dir", "/m", "--port", "1", "--served-name", "x"]
    monkeypatch.setenv(INSTANCE_KEY_ENV, "from-the-supervisor")
    with pytest.raises(SystemExit):
        cli.main(args)
    assert seen["api_key"] == "from-the-supervisor"
    assert INSTANCE_KEY_ENV not in os.environ  # nothing the server starts inherits it

    # started by hand without a key: it makes one and says it once
    with caplog.at_level(logging.WARNING, "chattune.serving"), pytest.raises(SystemExit):
        cli.main(args)
    made = seen["api_key"]
    assert isinstance(made, str) and len(made) >= 40
    assert f"this server's key is {made}" in caplog.text
