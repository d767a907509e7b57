"""One instance of a deployment: the engine of one model behind `/score` and the OpenAI API.

    python -m chattune.serving.model_server --model-dir PATH [--adapter NAME=PATH ...]
        --host 127.0.0.1 --port P --served-name NAME [--max-batch-size 16] [--parent-pid PID]
        [--torch-threads N] [--dtype auto|float32|bfloat16|float16]

It listens at once and loads the model on a thread: `GET /health` is 200 while the process
and the engine thread live (503 once the engine thread died), `GET /ready` is 503 until the
model is loaded, then 200. A model that fails to load ends the process with exit code 3 and
the reason as the last line of its log (what the supervisor reports).

No auth here: the gateway checks keys, and this server binds 127.0.0.1. Request headers
from the gateway: `x-chattune-timeout-ms` (the request's remaining budget: past it the
generation is cancelled and the answer is 408) and `x-chattune-adapter` (the LoRA adapter;
unknown names are a 400 listing the loaded ones).

`/score` answers `{"output": "text"}` for one conversation (a flat `input_string` of messages,
or a list holding one conversation, as the seed sends) and `{"output": ["text", ...]}`, one
per conversation and in order, for several; the conversations are generated in one batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from chattune.serving.chat import ChatPrompter
from chattune.serving.engine import DEFAULT_MAX_BATCH, Engine, EngineError, Handle
from chattune.serving.errors import HTTPProblem, install_error_handlers
from chattune.serving.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ScoreRequest,
    max_tokens,
    parse_body,
    prompt_ids,
    sampling_params,
)

log = logging.getLogger("chattune.serving")

SCORE_DEFAULT_MAX_NEW_TOKENS = 256
TIMEOUT_HEADER = "x-chattune-timeout-ms"
ADAPTER_HEADER = "x-chattune-adapter"
_POLL_S = 0.25  # how often a waiting request checks whether its client is still there


class ServerState:
    """What the routes share: the engine once loaded, or why it failed."""

    def __init__(self, served_name: str) -> None:
        self.served_name = served_name
        self.engine: Engine | None = None
        self.prompter: ChatPrompter | None = None
        self.error: str | None = None
        self.info: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        self.prompter = ChatPrompter(engine.tokenizer)
        self.engine = engine

    def ready(self) -> tuple[Engine, ChatPrompter]:
        if self.engine is None or self.prompter is None:
            why = f"the model failed to load: {self.error}" if self.error else "loading"
            raise HTTPProblem(503, f"the model is not ready ({why}); retry when /ready is 200.")
        return self.engine, self.prompter


def load_engine(
    model_dir: Path, adapters: dict[str, Path], max_batch_size: int, dtype_name: str = "auto"
) -> tuple[Engine, dict[str, Any]]:
    """Resolve, load and start the engine of `model_dir` (with `adapters`) in `dtype_name`
    (see `loader.serving_dtype`)."""
    import torch

    from chattune.compute.malloc import malloc_state
    from chattune.kernels.prepack import packed_count
    from chattune.models.checkpoint import resolve_checkpoint
    from chattune.models.loading import (
        DEFAULT_ADAPTER,
        load_model,
        load_tokenizer,
        serving_dtype,
    )

    t0 = time.perf_counter()
    ckpt = resolve_checkpoint(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = serving_dtype(device, dtype_name)
    log.info("loading %s (%s, base %s) on %s in %s", ckpt.model_dir, ckpt.kind, ckpt.base_id,
             device, str(dtype).removeprefix("torch."))  # fmt: skip
    model, names = load_model(ckpt, adapters, device=device, dtype=dtype)
    default = DEFAULT_ADAPTER if DEFAULT_ADAPTER in names else None
    engine = Engine(
        model,
        load_tokenizer(ckpt),
        adapters=names,
        default_adapter=default,
        max_batch_size=max_batch_size,
    )
    info = {
        "model_dir": str(ckpt.model_dir),
        "kind": ckpt.kind,
        "base_id": ckpt.base_id,
        "adapters": names,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "prepacked_linears": packed_count(model),
        "malloc": malloc_state() or "default",
        "context_length": engine.context_length,
        "load_seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("model loaded in %.1fs: %s", info["load_seconds"], info)
    return engine, info


def create_app(
    model_dir: Path | None = None,
    *,
    adapters: dict[str, Path] | None = None,
    served_name: str = "model",
    max_batch_size: int = DEFAULT_MAX_BATCH,
    engine: Engine | None = None,
    exit_on_load_failure: bool = False,
    dtype: str = "auto",
) -> FastAPI:
    """The model server's app.

    Args:
        model_dir: what to serve (see `resolve_checkpoint`); loaded on a thread at startup.
        adapters: more LoRA adapters by name (`x-chattune-adapter` picks one).
        served_name: the model name in OpenAI answers and `/v1/models`.
        max_batch_size: most requests decoded together.
        engine: an engine already loaded (tests); then `model_dir` is not used.
        exit_on_load_failure: end the process (exit code 3) if the model fails to load.
        dtype: the weights' dtype, "auto" or a name (see `loader.serving_dtype`).
    """
    state = ServerState(served_name)
    if engine is not None:
        state.attach(engine)

    def load() -> None:
        assert model_dir is not None
        try:
            eng, state.info = load_engine(model_dir, adapters or {}, max_batch_size, dtype)
            state.attach(eng)
        except Exception as exc:
            state.error = str(exc)
            log.exception("the model failed to load")
            if exit_on_load_failure:
                log.error("model server exiting: the model failed to load: %s", exc)
                logging.shutdown()
                os._exit(3)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if state.engine is None and model_dir is not None:
            threading.Thread(target=load, name="chattune-load", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="chattune model server", lifespan=lifespan)
    install_error_handlers(app)
    app.state.server = state

    @app.get("/health")
    def health() -> JSONResponse:
        if state.engine is not None and not state.engine.alive():
            return _status(503, "the engine thread died; restart this instance.")
        if state.error:
            return _status(503, f"the model failed to load: {state.error}")
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    def ready() -> JSONResponse:
        if state.engine is None or not state.engine.alive():
            return _status(503, state.error or "loading the model")
        return JSONResponse({"status": "ready"})

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        out: dict[str, Any] = {"ready": state.engine is not None, **state.info}
        if state.engine is not None:
            out["engine"] = state.engine.stats()
        return out

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": served_name, "object": "model", "created": 0, "owned_by": "chattune"}
        return {"object": "list", "data": [card]}

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        engine, prompter = state.ready()
        body = parse_body(ScoreRequest, await request.body())
        convs = body.input_data.input_string
        nested = bool(convs) and isinstance(convs[0], list)
        conversations: list[list[ChatMessage]] = convs if nested else [convs]  # type: ignore[list-item]
        many = len(conversations) > 1  # the seed's [conversation] answers one string
        p = body.input_data.parameters
        max_new = p.max_new_tokens if p.max_new_tokens is not None else p.max_gen_len
        field = "max_new_tokens" if p.max_new_tokens is not None else "max_gen_len"
        adapter = _adapter(request, engine)
        deadline = _deadline(request)
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
        outputs = await asyncio.gather(*(_collect(h, request, deadline) for h in handles))
        return JSONResponse({"output": outputs if many else outputs[0]})

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        engine, prompter = state.ready()
        body = parse_body(ChatCompletionRequest, await request.body())
        if body.n != 1:
            raise HTTPProblem(400, f"n={body.n} is not supported; set n to 1.", param="n")
        ids = prompt_ids(prompter, engine, body.messages, "messages")
        if body.max_completion_tokens is not None:
            n = max_tokens(engine, ids, body.max_completion_tokens, "max_completion_tokens")
        else:
            n = max_tokens(engine, ids, body.max_tokens, "max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        temperature = 1.0 if body.temperature is None else body.temperature
        params = sampling_params(engine, temperature, body.top_p, n, "", do_sample=True,
                           seed=body.seed, stop=stop)  # fmt: skip
        adapter = _adapter(request, engine)
        deadline = _deadline(request)
        handle = engine.submit(ids, params, adapter)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            events = _sse(handle, deadline, cid, created, served_name, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        text = await _collect(handle, request, deadline)
        message = {"role": "assistant", "content": text}
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": served_name,
            "choices": [{"index": 0, "message": message, "finish_reason": handle.finish_reason}],
            "usage": _usage(handle),
        })  # fmt: skip

    return app


# -- request checking ----------------------------------------------------------------------------
def _status(status: int, message: str) -> JSONResponse:
    from chattune.serving.errors import envelope

    return JSONResponse(envelope(status, message), status_code=status)


def _adapter(request: Request, engine: Engine) -> str | None:
    name = request.headers.get(ADAPTER_HEADER)
    if name is None:
        return None
    if name != "__base__" and name not in engine.adapters:
        known = ", ".join(engine.adapters) or "none (this server has no adapters)"
        raise HTTPProblem(
            400, f"unknown adapter {name!r} in {ADAPTER_HEADER}; loaded adapters: {known}.",
            param=ADAPTER_HEADER,
        )  # fmt: skip
    return name


def _deadline(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        ms = int(raw)
    except ValueError:
        ms = 0
    if ms <= 0:
        raise HTTPProblem(
            400, f"{TIMEOUT_HEADER} is {raw!r}; send a whole number of milliseconds > 0.",
            param=TIMEOUT_HEADER,
        )  # fmt: skip
    return time.monotonic() + ms / 1000


# -- answering -----------------------------------------------------------------------------------
def _timeout(handle: Handle) -> HTTPProblem:
    handle.cancel()
    return HTTPProblem(
        408,
        f"the request timed out after {handle.completion_tokens} generated tokens; the "
        "generation was stopped. Raise the deployment's request_timeout_ms or ask for fewer "
        "tokens.",
    )


async def _collect(handle: Handle, request: Request, deadline: float | None) -> str:
    """The whole answer; cancels the generation on timeout (408) or client disconnect."""
    parts: list[str] = []

    async def consume() -> None:
        async for delta in handle:
            parts.append(delta)

    task = asyncio.ensure_future(consume())
    try:
        while True:
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            done, _ = await asyncio.wait({task}, timeout=max(0.0, wait))
            if task in done:
                try:
                    task.result()
                except EngineError as exc:
                    raise HTTPProblem(500, f"{exc}; the server goes on, retry.") from exc
                return "".join(parts)
            if deadline is not None and time.monotonic() >= deadline:
                raise _timeout(handle)
            if await request.is_disconnected():
                handle.cancel()
                raise HTTPProblem(499, "the client disconnected; generation stopped.")
    finally:
        if not task.done():
            handle.cancel()
            task.cancel()


def _usage(handle: Handle) -> dict[str, int]:
    p, c = handle.prompt_tokens, handle.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def _sse(
    handle: Handle, deadline: float | None, cid: str, created: int, model: str, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, [usage], [DONE].

    A timeout mid-stream (status 200 already sent) ends the stream with an error event
    carrying the 408 envelope. A client that goes away closes this generator: the
    `finally` cancels the generation.
    """
    from chattune.serving.errors import envelope

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        data = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [choice], **extra}  # fmt: skip
        return f"data: {json.dumps(data)}\n\n"

    it = handle.__aiter__()
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                delta = await asyncio.wait_for(it.__anext__(), left)
            except StopAsyncIteration:
                break
            except TimeoutError:
                problem = _timeout(handle)
                yield f"data: {json.dumps(envelope(408, problem.message))}\n\n"
                return
            except EngineError as exc:
                yield f"data: {json.dumps(envelope(500, str(exc)))}\n\n"
                return
            yield chunk({"content": delta})
        yield chunk({}, handle.finish_reason)
        if usage:
            data = {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": _usage(handle)}  # fmt: skip
            yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()


# -- the process ---------------------------------------------------------------------------------
def _watch_parent(pid: int, server: Any) -> None:
    """Stop the server when process `pid` is gone (polled each second)."""
    import psutil

    while True:
        time.sleep(1.0)
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            log.warning("parent process %d is gone: shutting down", pid)
            server.should_exit = True
            time.sleep(10)
            os._exit(0)  # graceful shutdown hung


def _adapter_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=PATH")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    """Run one model server (the command line of this module's docstring)."""
    import uvicorn

    from chattune.models.loading import DTYPE_ENV, SERVING_DTYPES

    ap = argparse.ArgumentParser(prog="python -m chattune.serving.model_server")
    ap.add_argument("--model-dir", type=Path, required=True, help="what to serve")
    ap.add_argument("--adapter", type=_adapter_arg, action="append", default=[],
                    metavar="NAME=PATH", help="a LoRA adapter on the base (repeat it)")  # fmt: skip
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--served-name", required=True, help="model name in OpenAI answers")
    ap.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH)
    ap.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    ap.add_argument("--torch-threads", type=int, help="CPU threads per op (default: torch's); "
                    "instances sharing a CPU should split its cores")  # fmt: skip
    ap.add_argument("--dtype", choices=SERVING_DTYPES, default=os.environ.get(DTYPE_ENV, "auto"),
                    help=f"the weights' dtype (default ${DTYPE_ENV}, else auto: bf16 where the "
                    "hardware runs it, else fp16 on GPUs and fp32 on CPUs)")  # fmt: skip
    args = ap.parse_args(argv)
    from chattune.compute.malloc import tune_malloc
    from chattune.kernels.attention import attention_kernel

    attention_kernel()  # a bad CHATTUNE_ATTENTION_KERNEL fails at start, not in a prefill
    tune_malloc()  # prefill activations reused, not faulted in afresh at every prompt
    if args.torch_threads:
        # measured on 2 busy cores: a 16-row step of the tiny model took 99 ms with 2 threads
        # fighting other processes, 2.6 ms with 1
        import torch

        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    app = create_app(
        args.model_dir,
        adapters=dict(args.adapter),
        served_name=args.served_name,
        max_batch_size=args.max_batch_size,
        exit_on_load_failure=True,
        dtype=args.dtype,
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, server), daemon=True).start()
    log.info("model server for %s listening on %s:%d", args.served_name, args.host, args.port)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
