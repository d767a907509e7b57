"""The model server's service: turns a validated request into engine calls and wire
responses, and knows whether the engine is loaded.

It raises only domain errors (`chattune.errors`): `ServiceUnavailable` while the model
loads or after it failed to, `InvalidRequest` for what the model refuses (an unknown adapter,
a prompt over the context), `RequestTimeout` past the request's deadline, `ClientDisconnected`
when the client left; `http_errors` maps them once. The deadline and the disconnect are
watched by `lifetime`, the one place for both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from chattune.errors import InvalidRequest, RequestTimeout, ServiceUnavailable
from chattune.models.loading import BASE_ADAPTER
from chattune.serving.headers import ADAPTER_HEADER
from chattune.serving.http_errors import envelope_for
from chattune.serving.lifetime import Deadline, stream_within, within
from chattune.serving.model_server.chat import ChatPrompter
from chattune.serving.model_server.checks import max_tokens, prompt_ids, sampling_params
from chattune.serving.model_server.engine import Engine, Handle
from chattune.serving.model_server.sampling import TokenLogprobs
from chattune.serving.model_server.schemas import (
    SCORE_DEFAULT_MAX_NEW_TOKENS,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ModelList,
    ScoreRequest,
    ScoreResponse,
    TokenLogprob,
    TopLogprob,
    Usage,
)

log = logging.getLogger("chattune.serving")


@dataclass(frozen=True)
class Call:
    """What a request's headers and connection say about how to answer it.

    Args:
        request: the HTTP request (watched for a client disconnect).
        deadline: when the answer is due (`TIMEOUT_HEADER`).
        adapter: the LoRA adapter named in `ADAPTER_HEADER`, or None.
    """

    request: Request
    deadline: Deadline
    adapter: str | None

    @classmethod
    def of(cls, request: Request) -> Call:
        """Read the headers.

        Raises:
            InvalidRequest: the timeout header is not a whole number of milliseconds > 0.
        """
        return cls(request, Deadline.from_header(request), request.headers.get(ADAPTER_HEADER))


@dataclass(frozen=True)
class Ids:
    """What names one chat completion in each of its chunks."""

    id: str
    created: int
    model: str


class ModelService:
    """The engine of one model behind `/score` and the OpenAI API.

    Args:
        served_name: the model name in OpenAI answers and `/v1/models`.
    """

    def __init__(self, served_name: str) -> None:
        self.served_name = served_name
        self.engine: Engine | None = None
        self.prompter: ChatPrompter | None = None
        self.error: str | None = None  # why the model failed to load
        self.info: dict[str, Any] = {}  # what was loaded (see `loading.load_engine`)

    def attach(self, engine: Engine) -> None:
        """Serve with `engine` (loaded and started)."""
        self.prompter = ChatPrompter(engine.tokenizer)
        self.engine = engine

    # -- state ---------------------------------------------------------------------------------
    def check_alive(self) -> None:
        """Raises `ServiceUnavailable` once the engine thread died or the model failed to load."""
        if self.engine is not None and not self.engine.alive():
            raise ServiceUnavailable("the engine thread died; restart this instance.")
        if self.error:
            raise ServiceUnavailable(f"the model failed to load: {self.error}")

    def check_ready(self) -> None:
        """Raises `ServiceUnavailable` until the model is loaded (and while the engine lives)."""
        if self.engine is None or not self.engine.alive():
            raise ServiceUnavailable(self.error or "loading the model")

    def stats(self) -> dict[str, Any]:
        """What was loaded, and the engine's counters."""
        out: dict[str, Any] = {"ready": self.engine is not None, **self.info}
        if self.engine is not None:
            out["engine"] = self.engine.stats()
        return out

    def models(self) -> ModelList:
        return ModelList.of([self.served_name], owned_by="chattune")

    def _ready(self) -> tuple[Engine, ChatPrompter]:
        if self.engine is None or self.prompter is None:
            why = f"the model failed to load: {self.error}" if self.error else "loading"
            raise ServiceUnavailable(
                f"the model is not ready ({why}).", fix="retry when /ready is 200."
            )
        return self.engine, self.prompter

    def _adapter(self, engine: Engine, name: str | None) -> str | None:
        if name is None or name == BASE_ADAPTER or name in engine.adapters:
            return name
        known = ", ".join(engine.adapters) or "none (this server has no adapters)"
        raise InvalidRequest(
            f"unknown adapter {name!r} in {ADAPTER_HEADER}; loaded adapters: {known}.",
            param=ADAPTER_HEADER,
        )

    # -- the APIs ------------------------------------------------------------------------------
    async def score(self, body: ScoreRequest, call: Call) -> ScoreResponse:
        """Generate an answer per conversation of `body`, in one batch.

        Raises:
            ServiceUnavailable, InvalidRequest, RequestTimeout, ClientDisconnected.
        """
        engine, prompter = self._ready()
        adapter = self._adapter(engine, call.adapter)
        nested = body.input_data.nested
        conversations = body.input_data.conversations()
        p = body.input_data.parameters
        max_new = p.max_new_tokens if p.max_new_tokens is not None else p.max_gen_len
        field = "max_new_tokens" if p.max_new_tokens is not None else "max_gen_len"
        jobs = []
        for i, conv in enumerate(conversations):
            where = f"input_data.input_string[{i}]" if nested else "input_data.input_string"
            ids = prompt_ids(prompter, engine, conv, where)
            n = max_tokens(engine, ids, max_new, f"input_data.parameters.{field}",
                           default=SCORE_DEFAULT_MAX_NEW_TOKENS)  # fmt: skip
            params = sampling_params(
                engine, p.temperature, p.top_p, n, "input_data.parameters",
                do_sample=bool(p.do_sample),
            )  # fmt: skip
            jobs.append((ids, params))
        handles = [engine.submit(ids, params, adapter) for ids, params in jobs]
        outputs = await _collect(handles, call)
        return ScoreResponse.of(outputs)

    async def chat(
        self, body: ChatCompletionRequest, call: Call
    ) -> ChatCompletion | AsyncIterator[str]:
        """A chat completion, or (`stream: true`) its server-sent events.

        Raises:
            ServiceUnavailable, InvalidRequest, RequestTimeout, ClientDisconnected.
        """
        engine, prompter = self._ready()
        adapter = self._adapter(engine, call.adapter)
        if body.top_logprobs is not None and not body.logprobs:
            raise InvalidRequest(
                f"top_logprobs={body.top_logprobs} needs logprobs: true.",
                fix="set logprobs to true, or leave top_logprobs out.",
                param="top_logprobs",
            )
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        ids = prompt_ids(prompter, engine, body.messages, "messages")
        if body.max_completion_tokens is not None:
            n = max_tokens(engine, ids, body.max_completion_tokens, "max_completion_tokens")
        else:
            n = max_tokens(engine, ids, body.max_tokens, "max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        temperature = 1.0 if body.temperature is None else body.temperature
        params = sampling_params(engine, temperature, body.top_p, n, "", do_sample=True,
                                 seed=body.seed, stop=stop, logprobs=logprobs)  # fmt: skip
        handle = engine.submit(ids, params, adapter)
        # a LoRA deployment answers with its own name (the adapter's), not its process group's
        name = self.served_name if call.adapter in (None, BASE_ADAPTER) else call.adapter
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return self._events(handle, call.deadline, Ids(cid, created, name), usage, logprobs)
        (text,) = await _collect([handle], call)
        choice = Choice(
            message=AssistantMessage(content=text),
            logprobs=self._logprobs(handle.logprobs, logprobs),
            finish_reason=handle.finish_reason,
        )
        return ChatCompletion(
            id=cid, created=created, model=name, choices=[choice], usage=_usage(handle)
        )

    def _logprobs(self, records: list[TokenLogprobs], top: int | None) -> ChoiceLogprobs | None:
        """OpenAI's `logprobs` of `records` (None when the request asked for none)."""
        if top is None:
            return None
        assert self.engine is not None
        tokenizer = self.engine.tokenizer

        def entry(token: int, logprob: float) -> TopLogprob:
            # each token decoded alone, as vLLM's OpenAI server does: a token that is part of
            # a character decodes to U+FFFD, and its `bytes` are those of U+FFFD
            text = tokenizer.decode([token])
            return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

        content = [
            TokenLogprob(
                **entry(r.token, r.logprob).model_dump(),
                top_logprobs=[entry(t, lp) for t, lp in r.top],
            )
            for r in records
        ]
        return ChoiceLogprobs(content=content)

    # -- answering -----------------------------------------------------------------------------
    async def _events(
        self, handle: Handle, deadline: Deadline, ids: Ids, usage: bool, top: int | None
    ) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, content chunks, a finish chunk, [usage], [DONE].

        An error mid-stream (the 200 status is already sent; a timeout, an engine failure)
        ends the stream with an event carrying the error's envelope. A client that goes away
        closes this generator: the `finally` cancels the generation.
        """

        sent = 0  # logprobs sent so far: each chunk carries those of the tokens it adds

        def chunk(delta: Delta, finish: str | None = None, upto: int | None = None) -> str:
            nonlocal sent
            upto = len(handle.logprobs) if upto is None else upto
            logprobs = self._logprobs(handle.logprobs[sent:upto], top)
            sent = upto
            choice = ChunkChoice(delta=delta, logprobs=logprobs, finish_reason=finish)
            return ChatCompletionChunk(
                id=ids.id, created=ids.created, model=ids.model, choices=[choice]
            ).sse()

        try:
            yield chunk(Delta(role="assistant", content=""), upto=0)
            async for delta in stream_within(aiter(handle), deadline, _timed_out([handle])):
                yield chunk(Delta(content=delta), upto=handle.logprobs_sent)
            yield chunk(Delta(), handle.finish_reason)
            if usage:
                last = ChatCompletionChunk(
                    id=ids.id, created=ids.created, model=ids.model, choices=[],
                    usage=_usage(handle),
                )  # fmt: skip
                yield last.sse()
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the status is sent: the error goes as the last event
            if not isinstance(exc, RequestTimeout):
                log.exception("a streamed answer failed")
            yield f"data: {json.dumps(envelope_for(exc))}\n\n"
        finally:
            handle.cancel()


async def _collect(handles: list[Handle], call: Call) -> list[str]:
    """The whole answers, in order; every generation is cancelled past the deadline, when the
    client leaves, or when one of them fails."""

    async def texts() -> list[str]:
        async def text(handle: Handle) -> str:
            return "".join([delta async for delta in handle])

        return list(await asyncio.gather(*(text(h) for h in handles)))

    try:
        return await within(call.request, texts(), call.deadline, _timed_out(handles))
    finally:
        for handle in handles:  # no-op for the finished ones
            handle.cancel()


def _timed_out(handles: list[Handle]) -> Callable[[], RequestTimeout]:
    def error() -> RequestTimeout:
        generated = sum(h.completion_tokens for h in handles)
        return RequestTimeout(
            f"the request timed out after {generated} generated tokens; the generation was "
            "stopped.",
            fix="raise the deployment's request_timeout_ms or ask for fewer tokens.",
        )

    return error


def _usage(handle: Handle) -> Usage:
    return Usage.of(handle.prompt_tokens, handle.completion_tokens)
