"""Test harness of the gateway: fake model-server processes and a gateway served in a thread.

Each fake is a small FastAPI app in its own process (so it can really die mid-request), told
what to do by the request body (`{"fake": {...}}`) or by `POST /_control`, and reporting
what it saw at `GET /_stats`.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn

from chattune.serving.gateway.app import Gateway
from chattune.serving.gateway.auth import key_digest
from chattune.serving.gateway.config import DeploymentTarget, GatewayConfig

PRIMARY = "pk-" + secrets.token_urlsafe(24)
SECONDARY = "sk-" + secrets.token_urlsafe(24)

FAKE_SERVER = r"""
import asyncio, os, sys
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
import uvicorn

NAME, PORT = sys.argv[1], int(sys.argv[2])
app = FastAPI()
control = {}
stats = {"score": 0, "chat": 0, "disconnected": [], "finished": [], "headers": []}

@app.post("/_control")
async def set_control(request: Request):
    control.clear()
    control.update(await request.json())
    stats.update(score=0, chat=0, disconnected=[], finished=[], headers=[])
    return {}

@app.get("/_stats")
async def get_stats():
    return stats

async def behave(request: Request, route: str):
    body = await request.json()
    fake = {**control, **(body.get("fake") or {})}
    stats[route] += 1
    stats["headers"].append({k: request.headers.get(k) for k in
        ("authorization", "x-chattune-timeout-ms", "x-chattune-adapter", "x-request-id")})
    tag = fake.get("tag")
    if fake.get("die") == "before":
        os._exit(1)
    if fake.get("sleep"):
        end = asyncio.get_running_loop().time() + fake["sleep"]
        while asyncio.get_running_loop().time() < end:
            if await request.is_disconnected():
                stats["disconnected"].append(tag)
                return Response(status_code=499)
            await asyncio.sleep(0.02)
    status = fake.get("status", 200)
    if status >= 400:
        stats["finished"].append(tag)
        return JSONResponse({"error": {"message": f"{NAME} broke", "type": "x", "code": status,
                                       "param": None}}, status_code=status)
    if fake.get("chunks"):
        async def events():
            for i in range(fake["chunks"]):
                if i == fake.get("die_after"):
                    os._exit(1)
                yield f"data: {{\"i\": {i}, \"name\": \"{NAME}\"}}\n\n"
                await asyncio.sleep(fake.get("chunk_delay", 0))
            yield "data: [DONE]\n\n"
            stats["finished"].append(tag)
        return StreamingResponse(events(), media_type="text/event-stream")
    stats["finished"].append(tag)
    return {"output": NAME}

@app.post("/score")
async def score(request: Request):
    return await behave(request, "score")

@app.post("/v1/chat/completions")
async def chat(request: Request):
    return await behave(request, "chat")

uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake:
    """One fake model-server process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_SERVER, name, port],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_up(self, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake {self.name} exited with {self.proc.returncode}")
            try:
                httpx.get(self.url + "/_stats", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"fake {self.name} did not start in {timeout_s} s")

    def control(self, **behaviour: Any) -> None:
        """Set the default behaviour (and zero the stats)."""
        httpx.post(self.url + "/_control", json=behaviour, timeout=5.0).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_stats", timeout=5.0).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def start_fakes(*names: str) -> dict[str, Fake]:
    fakes: dict[str, Fake] = {}
    try:
        for name in names:
            fakes[name] = Fake(name)
        for fake in fakes.values():
            fake.wait_up()
    except BaseException:
        for fake in fakes.values():
            fake.stop()
        raise
    return fakes


class Served:
    """A gateway served by uvicorn in a thread."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(gateway.app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                self.server.should_exit = True  # never leave a half-started server behind
                self.thread.join(timeout=5)
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    def post(self, path: str = "/score", *, key: str | None = PRIMARY, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        kw.setdefault("json", SAMPLE)
        return self.client.post(path, headers=headers, **kw)

    def get(self, path: str, *, key: str | None = PRIMARY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return self.client.get(path, headers=headers)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=15)


HI = [{"role": "user", "content": "hi"}]
SAMPLE = {"input_data": {"input_string": HI, "parameters": {}}}


def settles(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Whether `condition` holds within `timeout_s` (the gateway frees a stream's slot just
    after the client has read its last byte)."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


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


def with_fake(**behaviour: Any) -> dict[str, Any]:
    return {**SAMPLE, "fake": behaviour}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == response.status_code
    return body["error"]
