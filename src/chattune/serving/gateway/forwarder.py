"""The gateway's one service: forward a routed request to a model-server instance.

Sends over one shared `httpx.AsyncClient` within each request's deadline
(`request_timeout_ms`, enforced by `lifetime`), relays server-sent-event streams as they
arrive, sends the mirror copy in the background, and turns upstream failures into the domain
errors of DESIGN.md: `RequestTimeout` (408) past the deadline, `UpstreamFailed` (424) when
the model server failed (refused, died, or answered 5xx); upstream 4xx pass through
unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from chattune.errors import ChattuneError, RequestTimeout, UpstreamFailed
from chattune.serving.gateway.config import MAX_REQUEST_TIMEOUT_MS, DeploymentTarget
from chattune.serving.gateway.routing import InFlight, Route, Slot, check_serving
from chattune.serving.gateway.score_chat import (
    CHAT_PATH,
    chat_bodies,
    is_chat,
    is_score,
    score_body,
    with_model,
)
from chattune.serving.headers import (
    ADAPTER_HEADER,
    DEPLOYMENT_HEADER,
    INSTANCE_AUTH_HEADER,
    REQUEST_ID_HEADER,
)
from chattune.serving.http_errors import envelope_of
from chattune.serving.keys import bearer
from chattune.serving.lifetime import Deadline, stream_within, within

log = logging.getLogger("chattune.serving.gateway")

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
            TooManyRequests: over the in-flight limit (429).
            RequestTimeout: past the deployment's `request_timeout_ms` (408).
            UpstreamFailed: the model server failed (424).
            ClientDisconnected: the client left first; the upstream request was closed.
        """
        target = route.target
        slot: Slot | None = self.in_flight.reserve(target)
        out = Outgoing.of(request, body, uuid.uuid4().hex)
        if route.mirror is not None:
            self._start_mirror(route.mirror, out)
        deadline = Deadline.after_ms(target.request_timeout_ms)
        headers = {
            DEPLOYMENT_HEADER: target.name,
            REQUEST_ID_HEADER: out.headers[REQUEST_ID_HEADER],
        }
        try:
            exchange = self._exchange(slot, out, deadline)
            upstream, content = await within(request, exchange, deadline, _timed_out(target))
            if content is None:
                media = upstream.headers["content-type"]
                relay = RelayResponse(upstream, slot, deadline, headers=headers, media_type=media)
                slot = None  # the relay owns it now: it frees it when the stream ends
                return relay
            return _answer(target.name, upstream, content, headers)
        except httpx.TransportError as exc:
            raise _failed(target.name, exc) from None
        finally:
            if slot is not None:
                slot.release()

    async def _exchange(
        self, slot: Slot, out: Outgoing, deadline: Deadline
    ) -> tuple[httpx.Response, bytes | None]:
        """The upstream response and its body; for an event stream, the open response and
        None (the body is relayed as it comes). The caller bounds it by the deadline:
        cancelling it closes the connection, which is what tells the model server to stop."""
        if slot.target.score_as_chat and is_score(out.path):
            return await self._score_as_chat(slot, out, deadline)
        if slot.target.score_as_chat and is_chat(out.path):
            out = dataclasses.replace(out, body=with_model(out.body, slot.target.name))
        upstream = await self._send(slot, out, deadline)
        self._log(slot, out, upstream)
        media = upstream.headers.get("content-type", "")
        if upstream.is_success and media.startswith("text/event-stream"):
            return upstream, None
        return upstream, await _read(upstream)

    async def _score_as_chat(
        self, slot: Slot, out: Outgoing, deadline: Deadline
    ) -> tuple[httpx.Response, bytes]:
        """`/score` on an instance that speaks only OpenAI's chat API: one chat completion
        per conversation, all on the instance the first one went to (`score_chat.py`). The
        first answer that is not a success is the answer (4xx as it came, 5xx -> 424)."""
        headers = {**out.headers, "content-type": "application/json"}
        outs = [
            Outgoing("POST", CHAT_PATH, headers, body)
            for body in chat_bodies(out.body, slot.target.name)
        ]
        first = await self._send(slot, outs[0], deadline)  # picks the instance
        self._log(slot, outs[0], first)
        answers = [(first, await _read(first))]

        async def on_same_instance(o: Outgoing) -> tuple[httpx.Response, bytes]:
            assert slot.instance is not None
            upstream = await self._send_to(slot, slot.instance, o, deadline)
            self._log(slot, o, upstream)
            return upstream, await _read(upstream)

        answers += await asyncio.gather(*(on_same_instance(o) for o in outs[1:]))
        for upstream, content in answers:
            if not upstream.is_success:
                return upstream, content
        body = score_body([content for _, content in answers])
        return httpx.Response(200, headers={"content-type": "application/json"}), body

    def _log(self, slot: Slot, out: Outgoing, upstream: httpx.Response) -> None:
        log.info(
            "%s %s %s -> %s %s %d",
            out.headers[REQUEST_ID_HEADER],
            out.method,
            out.path,
            slot.target.name,
            slot.instance,
            upstream.status_code,
        )

    async def _send(self, slot: Slot, out: Outgoing, deadline: Deadline) -> httpx.Response:
        """Send to the least busy instance; on connection refused (the request never got
        there, so retrying is safe) go on to the next one."""
        refused: httpx.ConnectError | None = None
        while (url := slot.next_instance()) is not None:
            try:
                return await self._send_to(slot, url, out, deadline)
            except httpx.ConnectError as exc:
                log.warning("instance %s of deployment %s refused: %s", url, slot.target.name, exc)
                refused = exc
        raise _failed(slot.target.name, refused or httpx.ConnectError("no instance to try"))

    async def _send_to(
        self, slot: Slot, url: str, out: Outgoing, deadline: Deadline
    ) -> httpx.Response:
        """Send `out` to the instance at `url`; the response is open (streamed)."""
        headers = {**out.headers, **deadline.header()}
        if slot.target.adapter:
            headers[ADAPTER_HEADER] = slot.target.adapter
        if slot.target.instance_key:
            headers[INSTANCE_AUTH_HEADER] = bearer(slot.target.instance_key)
        upstream = self.client.build_request(
            out.method, url + out.path, headers=headers, content=out.body
        )
        return await self.client.send(upstream, stream=True)

    def _start_mirror(self, shadow: DeploymentTarget, out: Outgoing) -> None:
        task = asyncio.create_task(self._mirror(shadow, out))
        self._mirrors.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._mirrors.discard)

    async def _mirror(self, shadow: DeploymentTarget, out: Outgoing) -> None:
        """Send the shadow copy and drop its answer; failures are only logged."""
        try:
            check_serving(shadow)
            slot = self.in_flight.reserve(shadow)
        except ChattuneError as exc:
            log.info("mirror copy to deployment %s skipped: %s", shadow.name, exc.message)
            return
        try:
            deadline = Deadline.after_ms(shadow.request_timeout_ms)
            async with deadline.limit():
                upstream, _ = await self._exchange(slot, out, deadline)
            if upstream.status_code >= 400:
                log.warning("mirror deployment %s answered %d", shadow.name, upstream.status_code)
        except (TimeoutError, httpx.HTTPError, ChattuneError) as exc:
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
        deadline: Deadline,
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
        chunks = stream_within(self._upstream.aiter_bytes(), self._deadline, _timed_out(target))
        pending = b""
        try:
            async for chunk in chunks:
                pending += chunk
                # Only whole events go out, so an error event never lands inside a cut one.
                cut = _events_end(pending)
                if cut:
                    yield pending[:cut]
                    pending = pending[cut:]
            if pending:
                yield pending
        except RequestTimeout as exc:
            yield _sse_error(exc)
        except httpx.TransportError as exc:
            yield _sse_error(_failed(target.name, exc))


async def _read(upstream: httpx.Response) -> bytes:
    """The whole body of an open response, which is then closed."""
    try:
        return await upstream.aread()
    finally:
        await upstream.aclose()


def _events_end(buffer: bytes) -> int:
    """Index just past the last complete SSE event in `buffer` (0 if none)."""
    ends = [buffer.rfind(sep) + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if sep in buffer]
    return max(ends, default=0)


def _sse_error(exc: ChattuneError) -> bytes:
    data = json.dumps(envelope_of(exc))
    return f"event: error\ndata: {data}\n\n".encode()


def _answer(
    name: str, upstream: httpx.Response, content: bytes, headers: dict[str, str]
) -> Response:
    """The client's answer: success and 4xx as they came (4xx is the client's fault and
    the model server's envelope says why); 5xx becomes 424 carrying the upstream message."""
    if upstream.status_code >= 500:
        raise UpstreamFailed(
            f"the model server failed: deployment '{name}' answered HTTP "
            f"{upstream.status_code}: {_upstream_message(upstream, content)}",
            deployment=name,
        )
    media = upstream.headers.get("content-type")
    return Response(content, status_code=upstream.status_code, headers=headers, media_type=media)


def _upstream_message(upstream: httpx.Response, content: bytes) -> str:
    try:
        return str(httpx.Response(200, content=content).json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return content.decode("utf-8", "replace")[:500] or upstream.reason_phrase


def _failed(name: str, exc: Exception) -> UpstreamFailed:
    return UpstreamFailed(
        f"the model server failed: deployment '{name}' did not answer ({type(exc).__name__}: "
        f"{exc or 'connection lost'}).",
        fix="see `chattune deployment logs`; the supervisor restarts a dead instance.",
        deployment=name,
    )


def _timed_out(target: DeploymentTarget) -> Callable[[], RequestTimeout]:
    """The error of a request to `target` that ran past its `request_timeout_ms`."""
    return lambda: RequestTimeout(
        f"request timeout: deployment '{target.name}' did not answer within "
        f"request_timeout_ms={target.request_timeout_ms}; the generation was stopped.",
        fix=f"ask for fewer tokens, or raise --request-timeout-ms (at most "
        f"{MAX_REQUEST_TIMEOUT_MS}).",
        deployment=target.name,
    )
