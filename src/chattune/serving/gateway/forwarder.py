"""The gateway's one service: forward a routed request to a model-server instance.

Sends over one shared `httpx.AsyncClient` with each request's deadline
(`request_timeout_ms`), relays server-sent-event streams as they arrive, sends the mirror
copy in the background, and turns upstream failures into the status codes of DESIGN.md:
408 past the deadline, 424 when the model server failed (refused, died, or answered 5xx);
upstream 4xx pass through unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from chattune.serving.gateway.config import MAX_REQUEST_TIMEOUT_MS, DeploymentTarget
from chattune.serving.gateway.routing import DEPLOYMENT_HEADER, InFlight, Route, Slot, check_serving
from chattune.serving.http_errors import HTTPProblem, envelope

log = logging.getLogger("chattune.serving.gateway")

TIMEOUT_HEADER = "x-chattune-timeout-ms"  # the time budget left, for the model server
ADAPTER_HEADER = "x-chattune-adapter"  # the LoRA adapter of a --lora-only deployment
REQUEST_ID_HEADER = "x-request-id"
T = TypeVar("T")
_PASSED_UP = ("content-type", "accept")  # client headers the model server may need; never auth


@dataclass(frozen=True)
class Outgoing:
    """What is sent upstream: built once from the client's request, reused by the mirror."""

    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, request: Request, body: bytes, request_id: str) -> Outgoing:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {h: request.headers[h] for h in _PASSED_UP if h in request.headers}
        headers[REQUEST_ID_HEADER] = request_id
        return cls(request.method, path, headers, body)


class Forwarder:
    """Sends requests to model-server instances over one shared `httpx.AsyncClient`."""

    def __init__(self, in_flight: InFlight) -> None:
        self.in_flight = in_flight
        self._client: httpx.AsyncClient | None = None
        self._mirrors: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the shared client. No timeout of its own: each request has its deadline."""
        self._client = httpx.AsyncClient(
            timeout=None,
            trust_env=False,  # instances are on 127.0.0.1: never through a proxy
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def stop(self) -> None:
        """Drop pending mirror copies and close the client."""
        for task in list(self._mirrors):
            task.cancel()
        await asyncio.gather(*self._mirrors, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the gateway's HTTP client is not open: serve gateway.app")
        return self._client

    async def forward(self, request: Request, route: Route, body: bytes) -> Response:
        """Answer the client's request from the routed deployment (and mirror a copy).

        Raises:
            HTTPProblem: 429 over the in-flight limit; 408 past the deployment's
                `request_timeout_ms`; 424 when the model server failed.
        """
        target = route.target
        slot: Slot | None = self.in_flight.reserve(target)
        out = Outgoing.of(request, body, uuid.uuid4().hex)
        if route.mirror is not None:
            self._start_mirror(route.mirror, out)
        deadline = _deadline(target.request_timeout_ms)
        headers = {
            DEPLOYMENT_HEADER: target.name,
            REQUEST_ID_HEADER: out.headers[REQUEST_ID_HEADER],
        }
        try:
            exchange = self._exchange(slot, out, deadline)
            upstream, content = await _unless_client_leaves(request, exchange)
            if content is None:
                media = upstream.headers["content-type"]
                relay = RelayResponse(upstream, slot, deadline, headers=headers, media_type=media)
                slot = None  # the relay owns it now: it frees it when the stream ends
                return relay
            return _answer(target.name, upstream, content, headers)
        except TimeoutError:
            raise _timed_out(target.name, target.request_timeout_ms) from None
        except httpx.TransportError as exc:
            raise _failed(target.name, exc) from None
        finally:
            if slot is not None:
                slot.release()

    async def _exchange(
        self, slot: Slot, out: Outgoing, deadline: float
    ) -> tuple[httpx.Response, bytes | None]:
        """The upstream response and its body; for an event stream, the open response and
        None (the body is relayed as it comes)."""
        upstream = await self._send(slot, out, deadline)
        log.info(
            "%s %s %s -> %s %s %d",
            out.headers[REQUEST_ID_HEADER],
            out.method,
            out.path,
            slot.target.name,
            slot.instance,
            upstream.status_code,
        )
        media = upstream.headers.get("content-type", "")
        if upstream.is_success and media.startswith("text/event-stream"):
            return upstream, None
        try:
            async with asyncio.timeout_at(deadline):
                return upstream, await upstream.aread()
        finally:
            await upstream.aclose()

    async def _send(self, slot: Slot, out: Outgoing, deadline: float) -> httpx.Response:
        """Send to the least busy instance; on connection refused (the request never got
        there, so retrying is safe) go on to the next one."""
        refused: httpx.ConnectError | None = None
        while (url := slot.next_instance()) is not None:
            headers = {**out.headers, TIMEOUT_HEADER: str(_left_ms(deadline))}
            if slot.target.adapter:
                headers[ADAPTER_HEADER] = slot.target.adapter
            upstream = self.client.build_request(
                out.method, url + out.path, headers=headers, content=out.body
            )
            try:
                # Cancelling at the deadline closes the connection, which is what tells the
                # model server to stop generating.
                async with asyncio.timeout_at(deadline):
                    return await self.client.send(upstream, stream=True)
            except httpx.ConnectError as exc:
                log.warning("instance %s of deployment %s refused: %s", url, slot.target.name, exc)
                refused = exc
        raise _failed(slot.target.name, refused or httpx.ConnectError("no instance to try"))

    def _start_mirror(self, shadow: DeploymentTarget, out: Outgoing) -> None:
        task = asyncio.create_task(self._mirror(shadow, out))
        self._mirrors.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._mirrors.discard)

    async def _mirror(self, shadow: DeploymentTarget, out: Outgoing) -> None:
        """Send the shadow copy and drop its answer; failures are only logged."""
        try:
            check_serving(shadow)
            slot = self.in_flight.reserve(shadow)
        except HTTPProblem as exc:
            log.info("mirror copy to deployment %s skipped: %s", shadow.name, exc.message)
            return
        try:
            deadline = _deadline(shadow.request_timeout_ms)
            upstream = await self._send(slot, out, deadline)
            try:
                async with asyncio.timeout_at(deadline):
                    await upstream.aread()
            finally:
                await upstream.aclose()
            if upstream.status_code >= 400:
                log.warning("mirror deployment %s answered %d", shadow.name, upstream.status_code)
        except (TimeoutError, httpx.HTTPError, HTTPProblem) as exc:
            log.warning("mirror copy to deployment %s failed: %s", shadow.name, exc)
        finally:
            slot.release()


class RelayResponse(StreamingResponse):
    """Relays an upstream server-sent-event stream event by event, as it arrives.

    If the instance dies or the deadline passes mid-stream, the stream ends with an
    `event: error` carrying the error envelope (the status cannot change once sent). However
    the stream ends (done, error, client gone), the upstream request is closed and the
    in-flight slot freed: `__call__` is the ASGI entry point, wrapped for that cleanup.
    """

    def __init__(
        self,
        upstream: httpx.Response,
        slot: Slot,
        deadline: float,
        *,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        self._upstream = upstream
        self._slot = slot
        self._deadline = deadline
        super().__init__(
            self._relay(), status_code=upstream.status_code, headers=headers, media_type=media_type
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()
            self._slot.release()

    async def _relay(self) -> AsyncGenerator[bytes, None]:
        target = self._slot.target
        chunks: AsyncIterator[bytes] = self._upstream.aiter_bytes()
        pending = b""
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline):
                        pending += await anext(chunks)
                except StopAsyncIteration:
                    break
                # Only whole events go out, so an error event never lands inside a cut one.
                cut = _events_end(pending)
                if cut:
                    yield pending[:cut]
                    pending = pending[cut:]
            if pending:
                yield pending
        except TimeoutError:
            yield _sse_error(_timed_out(target.name, target.request_timeout_ms))
        except httpx.TransportError as exc:
            yield _sse_error(_failed(target.name, exc))


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, cancelling it if the client disconnects first: cancelling closes the
    upstream connection, so the model server stops generating an answer nobody will read.

    Raises:
        HTTPProblem: 499 (nginx's "client closed request"; nobody receives it) when the
            client left.
    """
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself was cancelled (server shutting down)
        task.cancel()
        raise
    finally:
        left.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.wait({task})  # let its cleanup close the upstream connection
    log.info("the client left before the answer; the upstream request was closed")
    raise HTTPProblem(499, "the client closed the request before the answer was ready")


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read whole already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _events_end(buffer: bytes) -> int:
    """Index just past the last complete SSE event in `buffer` (0 if none)."""
    ends = [buffer.rfind(sep) + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if sep in buffer]
    return max(ends, default=0)


def _sse_error(problem: HTTPProblem) -> bytes:
    data = json.dumps(envelope(problem.status, problem.message))
    return f"event: error\ndata: {data}\n\n".encode()


def _answer(
    name: str, upstream: httpx.Response, content: bytes, headers: dict[str, str]
) -> Response:
    """The client's answer: success and 4xx as they came (4xx is the client's fault and
    the model server's envelope says why); 5xx becomes 424 carrying the upstream message."""
    if upstream.status_code >= 500:
        raise HTTPProblem(
            424,
            f"the model server failed: deployment '{name}' answered HTTP "
            f"{upstream.status_code}: {_upstream_message(upstream, content)}",
            headers=headers,
        )
    media = upstream.headers.get("content-type")
    return Response(content, status_code=upstream.status_code, headers=headers, media_type=media)


def _upstream_message(upstream: httpx.Response, content: bytes) -> str:
    try:
        return str(httpx.Response(200, content=content).json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return content.decode("utf-8", "replace")[:500] or upstream.reason_phrase


def _failed(name: str, exc: Exception) -> HTTPProblem:
    return HTTPProblem(
        424,
        f"the model server failed: deployment '{name}' did not answer ({type(exc).__name__}: "
        f"{exc or 'connection lost'}). Fix: see `chattune deployment logs`; the supervisor "
        "restarts a dead instance.",
        headers={DEPLOYMENT_HEADER: name},
    )


def _timed_out(name: str, timeout_ms: int) -> HTTPProblem:
    return HTTPProblem(
        408,
        f"request timeout: deployment '{name}' did not answer within request_timeout_ms="
        f"{timeout_ms}; the generation was stopped. Fix: ask for fewer tokens, or raise "
        f"--request-timeout-ms (at most {MAX_REQUEST_TIMEOUT_MS}).",
        headers={DEPLOYMENT_HEADER: name},
    )


def _deadline(timeout_ms: int) -> float:
    return asyncio.get_running_loop().time() + timeout_ms / 1000


def _left_ms(deadline: float) -> int:
    return max(1, int((deadline - asyncio.get_running_loop().time()) * 1000))
