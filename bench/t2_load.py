"""Load for the T2 serving benchmark: the chat requests, the closed-loop async client, and the
statistics of one run.

Requests: conversations of chitchat's `test_gen`, cut after one of their first user turns
(so the prompt is the conversation so far, ending on the user), shuffled with a fixed seed,
cycled when more are asked for than there are cuts. Every request is greedy with the same
`max_tokens`.

One run = N requests sent by C workers (a closed loop: each worker sends its next request as
soon as its previous one is answered) over one `httpx.AsyncClient`. Streaming servers are read
as server-sent events, so the time to first token is the arrival of the first non-empty text
delta; a server that does not stream (mlflow serve) gets TTFT = latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from common import BenchFailed

REQUEST_TIMEOUT_S = 900.0
MAX_USER_TURNS = 3  # cuts after user turns 1..3: prompts of 32 to ~470 tokens, mean ~115


def build_requests(test_gen: Path, n: int) -> list[list[dict[str, str]]]:
    """`n` message lists, each a test_gen conversation cut after one of its first
    `MAX_USER_TURNS` user turns.

    The cuts are shuffled with a fixed seed (so the first 8 requests mix short and long
    prompts as the first 64 do) and cycled to reach `n`.

    Raises:
        BenchFailed: the file holds no usable conversation.
    """
    convs = []
    for line in test_gen.read_text().splitlines():
        if line.strip():
            msgs = [
                {"role": m["role"], "content": m["content"]}
                for m in json.loads(line)["messages"]
                if m["role"] in ("user", "assistant")
            ]
            if msgs and msgs[0]["role"] == "user":
                convs.append(msgs)
    cuts = [
        c[: 2 * depth + 1]
        for depth in range(MAX_USER_TURNS)
        for c in convs
        if len(c) > 2 * depth and c[2 * depth]["role"] == "user"
    ]
    if not cuts:
        raise BenchFailed(f"{test_gen} has no conversation that starts with a user turn")
    random.Random(0).shuffle(cuts)
    return [cuts[i % len(cuts)] for i in range(n)]


def request_body(api: str, messages: list[dict], max_tokens: int, stream: bool, model: str | None):
    """The JSON body of one greedy chat request for an "openai" or "mlflow" server."""
    if api == "mlflow":
        # MLflow's llm/v1/chat schema (no `stream`, no `model`). Its greedy is `top_k: 1`:
        # `temperature: 0` is refused (HTTP 400 from transformers' TemperatureLogitsWarper,
        # because the text-generation pipeline samples by default) and `do_sample` is not in
        # the signature, so it is dropped and the answer is sampled.
        return {"messages": messages, "max_tokens": max_tokens, "top_k": 1}
    body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
    if model:
        body["model"] = model
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class Record:
    """One request's outcome. Times in seconds from the start of the run."""

    idx: int
    start: float
    end: float
    ttft: float  # from its own start
    text: str
    usage_completion_tokens: int | None
    finish_reason: str | None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


async def _one(client: httpx.AsyncClient, target: Any, body: dict, idx: int, t0: float) -> Record:
    start = time.perf_counter()
    text, usage, finish, ttft = "", None, None, None
    try:
        if target.stream:
            async with client.stream("POST", target.url, json=body, headers=target.headers) as r:
                if r.status_code != 200:
                    raise BenchFailed(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
                parts = []
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise BenchFailed(f"error event: {chunk['error']}")
                    for choice in chunk.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            if ttft is None:
                                ttft = time.perf_counter() - start
                            parts.append(delta)
                        finish = choice.get("finish_reason") or finish
                    if chunk.get("usage"):
                        usage = chunk["usage"].get("completion_tokens")
                text = "".join(parts)
        else:
            r = await client.post(target.url, json=body, headers=target.headers)
            if r.status_code != 200:
                raise BenchFailed(f"HTTP {r.status_code}: {r.text[:300]!r}")
            out = r.json()
            out = out[0] if isinstance(out, list) else out  # mlflow: a list of one completion
            choice = out["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
            usage = (out.get("usage") or {}).get("completion_tokens")
    except (httpx.HTTPError, BenchFailed, ValueError, KeyError) as exc:
        end = time.perf_counter()
        return Record(
            idx,
            start - t0,
            end - t0,
            end - start,
            text,
            usage,
            finish,
            error=f"{type(exc).__name__}: {exc}",
        )
    end = time.perf_counter()
    return Record(
        idx, start - t0, end - t0, (ttft if ttft is not None else end - start), text, usage, finish
    )


async def _run(target: Any, convs: list, concurrency: int, max_tokens: int) -> tuple[list, float]:
    bodies = [request_body(target.api, m, max_tokens, target.stream, target.model) for m in convs]
    todo = iter(range(len(bodies)))
    records: list[Record] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        t0 = time.perf_counter()

        async def worker() -> None:
            for i in todo:  # one shared iterator: each index is taken by one worker
                records.append(await _one(client, target, bodies[i], i, t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return sorted(records, key=lambda r: r.idx), wall


def run_load(target: Any, convs: list, concurrency: int, max_tokens: int) -> tuple[list, float]:
    """Send every conversation of `convs` to `target` with `concurrency` workers.

    Returns:
        the records in request order and the wall time of the run (s).
    """
    return asyncio.run(_run(target, convs, concurrency, max_tokens))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(records: list[Record], wall: float, count_tokens: Any) -> dict[str, Any]:
    """Throughput and latency of one run.

    `count_tokens(text)` counts the tokens of an answer with the model's tokenizer: the same
    rule for every contender (servers differ in whether their usage counts the end-of-turn
    token). The servers' own usage counts are kept beside it.
    """
    ok = [r for r in records if r.error is None]
    tokens = [count_tokens(r.text) for r in ok]
    usage = [r.usage_completion_tokens for r in ok]
    lat = [r.latency for r in ok]
    ttft = [r.ttft for r in ok]
    usage_known = all(u is not None for u in usage) and bool(usage)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "empty": sum(1 for r in ok if not r.text.strip()),
        "wall_s": wall,
        "output_tokens": sum(tokens),
        "output_tok_s": sum(tokens) / wall,
        "usage_output_tokens": sum(usage) if usage_known else None,
        "usage_output_tok_s": sum(usage) / wall if usage_known else None,
        "requests_s": len(ok) / wall,
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "latency_mean_s": statistics.fmean(lat) if lat else float("nan"),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "mean_output_tokens": statistics.fmean(tokens) if tokens else float("nan"),
        "finish_reasons": {
            f: sum(1 for r in ok if r.finish_reason == f) for f in {r.finish_reason for r in ok}
        },
    }


def record_dicts(records: list[Record]) -> list[dict[str, Any]]:
    """The records as JSON-ready dicts (latency included)."""
    return [{**asdict(r), "latency": r.latency} for r in records]
