"""The inference engine: one model, continuous batching on a background thread.

    submit(prompt_ids, params, adapter) -> Handle  (any thread or an asyncio loop)
        queue -> prefill (requests that arrive together: one packed forward, up to
        `prefill_tokens`) -> joins the running batch -> one decode step per token for every
        row at once -> leaves as soon as it stops (eos, end of turn, stop string,
        max_new_tokens, cancel)

The batch is one `kvcache.BatchCache` (preallocated: a step writes a column in place) whose
rows are left-padded to a common length T:

    keys/values (B, heads, T, head_dim)   mask (B, T): 1 real token, 0 padding

Prompts are prefilled without padding (alone, or packed back to back in one row with
attention per prompt), so no fully masked query row can put NaNs in the cache; then each
request's KV row is written in, right-aligned (the batch's region extends left with zeros
when the newcomer is longer). `position_ids` count only real tokens, so a row's logits do
not depend on its neighbours (up to float summation order). Leaving rows are compacted with
`index_select`, and columns that are padding in every row are trimmed. Rows are kept longest
first, so that a decode step attends in runs of rows of similar length, each over its own
columns only (`decode_buckets`): short rows skip the long rows' padding.

LoRA: rows of different adapters share one forward pass through PEFT's mixed-batch LoRA
(`adapter_names=[...]` per row, `"__base__"` for none; peft/tuners/lora/layer.py
`_mixed_batch_forward`).

Example:
    >>> engine = Engine(model, tokenizer)
    >>> handle = engine.submit(ids, SamplingParams(max_new_tokens=32))
    >>> "".join(handle)  # or `async for delta in handle` inside an event loop
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from chattune.errors import ChattuneError, EngineError, InvalidParameter, ServiceUnavailable
from chattune.models.eos import stop_token_ids
from chattune.models.loading import BASE_ADAPTER, cache_keyword
from chattune.serving.model_server.chat import (
    Detokenizer,
    StopMatcher,
    model_context_length,
)
from chattune.serving.model_server.sampling import (
    SamplingParams,
    TokenLogprobs,
    sample_next,
    token_logprobs,
)

if TYPE_CHECKING:  # transformers is imported by the engine thread, not by `schemas`' users
    from chattune.serving.model_server.kvcache import BatchCache

log = logging.getLogger("chattune.serving")


# Most rows decoded together. With 16, half of 32 concurrent requests queued (BENCHMARKS.md,
# T2 sweep: time to first token 16 s); the KV cache grows only with the live rows.
DEFAULT_MAX_BATCH = 32


# -- the handle -------------------------------------------------------------------------------
_TEXT, _END, _ERROR = "text", "end", "error"


class Handle:
    """One submitted request: iterate it for text deltas, as they are decoded.

    Iterate with `for` (no event loop) or `async for` (submitted from inside a loop).
    After the iteration: `finish_reason` ("stop" | "length" | "cancelled"), `prompt_tokens`,
    `completion_tokens`, `token_ids` (eos included). A domain error (`ChattuneError`) on the
    engine thread is raised from the iteration as it is; any other failure as `EngineError`.

    With `SamplingParams.logprobs` set, `logprobs` holds one `TokenLogprobs` per answer token
    (eos left out, as it is not text), and `logprobs_sent` how many of them had been recorded
    when the delta last yielded was decoded: a stream sends those with that delta.
    """

    _ids = itertools.count(1)

    def __init__(self, prompt_tokens: int, adapter: str | None) -> None:
        self.id = next(self._ids)
        self.prompt_tokens = prompt_tokens
        self.adapter = adapter
        self.completion_tokens = 0
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprobs] = []
        self.logprobs_sent = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self._engine: Engine | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self._aq: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        except RuntimeError:
            self._loop = None
            self._q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def cancel(self) -> None:
        """Stop generating: the row leaves the batch at the next step (finish "cancelled")."""
        if not self.done:
            self.cancelled.set()
            if self._engine is not None:
                self._engine._wake()

    # called on the engine thread
    def _put(self, kind: str, value: Any) -> None:
        if self._loop is None:
            self._q.put((kind, value))
            return
        try:
            self._loop.call_soon_threadsafe(self._aq.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    def _unpack(self, item: tuple[str, Any]) -> str | None:
        kind, value = item
        if kind == _TEXT:
            text, self.logprobs_sent = value
            return text
        if kind == _ERROR:
            if isinstance(value, ChattuneError):
                raise value  # a domain error keeps its class (and so its status code)
            raise EngineError(f"generation failed: {type(value).__name__}: {value}") from value
        return None

    def __iter__(self) -> Iterator[str]:
        if self._loop is not None:
            raise RuntimeError("this handle was submitted inside an event loop: use `async for`")
        while (delta := self._unpack(self._q.get())) is not None:
            yield delta

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._loop is None:
            raise RuntimeError("this handle was submitted outside an event loop: use `for`")
        while (delta := self._unpack(await self._aq.get())) is not None:
            yield delta

    def text(self) -> str:
        """The whole answer (blocks until it is finished)."""
        return "".join(self)


def _serving_attention(model: Any, packed: bool, decode: bool) -> tuple[bool, bool]:
    """Switch `model`'s sdpa attention to chattune's serving attention with packed prefills
    (`packed`) and the decode-step attention (`decode`) as asked. Returns whether it can
    prefill packed prompts (sdpa switched with `packed`, or flash attention) and whether
    decode steps take `kernels.attention.decode_attention_forward`."""
    from chattune.kernels.attention import SERVING_ATTENTIONS, register_serving

    impl = getattr(model.config, "_attn_implementation", None)
    if impl == "sdpa" or impl in SERVING_ATTENTIONS.values():
        name = register_serving(packed, decode)
        if name != impl:
            model.set_attn_implementation(name)
        return packed, decode
    return packed and impl in ("flash_attention_2", "flash_attention_3"), False


# One more SDPA call per layer costs about what attending over this many (row, column) pairs
# does: ~30 us against ~0.13 us per pair (bf16, 16 rows x 347 columns, this project's CPU).
BUCKET_OVERHEAD = 256


def decode_buckets(
    lengths: Sequence[int], overhead: int = BUCKET_OVERHEAD
) -> tuple[tuple[int, int, int], ...]:
    """Split a decode step's rows into runs that attend separately: (first row, end row,
    width), width the longest row of the run, minimising the columns attended over plus
    `overhead` per run.

    The batch is left-padded to its longest row, so attending over the whole width reads
    every shorter row's padding; sorted longest first (`Engine` keeps them so), a run of
    short rows attends over only its own last `width` columns. Exact for any order; with
    lengths [500, 480, 60, 50] the runs are (0, 2, 500) and (2, 4, 60).
    """
    n = len(lengths)
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)  # best[i]: cheapest split of rows[:i]
    for end in range(1, n + 1):
        widest = 0
        for start in range(end - 1, -1, -1):
            widest = max(widest, lengths[start])
            cost = best[start] + (end - start) * widest + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs, end = [], n
    while end > 0:
        start = cut[end]
        runs.append((start, end, max(lengths[start:end])))
        end = start
    return tuple(reversed(runs))


def _by_adapter(rows: list[_Row]) -> list[list[_Row]]:
    """`rows` grouped by adapter, in order of first appearance."""
    groups: dict[str, list[_Row]] = {}
    for r in rows:
        groups.setdefault(r.adapter, []).append(r)
    return list(groups.values())


@dataclass
class _Row:
    handle: Handle
    params: SamplingParams
    prompt: list[int]
    adapter: str
    gen: torch.Generator
    detok: Detokenizer
    stops: StopMatcher
    next_token: int = -1  # sampled, not yet fed to the model
    prefix: Any = None  # a DynamicCache of the prompt's first tokens, computed by the caller


@dataclass
class EngineStats:
    """Counters since start. `joined_running`: requests admitted while other rows were
    mid-decode (continuous batching); `max_batch`: most rows in one decode step."""

    requests: int = 0
    prefills: int = 0
    prefill_forwards: int = 0  # prefills packed together count once
    steps: int = 0
    rows_stepped: int = 0  # sum of the batch size over steps: / steps = mean batch
    max_batch: int = 0
    joined_running: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of those, read from a caller's `prefix` (not prefilled)
    generated_tokens: int = 0
    prefill_seconds: float = 0.0  # wall time in prefills
    step_seconds: float = 0.0  # wall time in decode steps
    running: int = 0
    waiting: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Continuous-batching generation with one model (and its LoRA adapters).

    Args:
        model: a causal LM in eval mode (a `PeftModel` when adapters are loaded).
        tokenizer: its tokenizer (decoding, eos ids).
        adapters: the LoRA adapter names loaded in `model`.
        default_adapter: used when a request names none (None: the base model).
        eos_ids: token ids that end an answer; default: the model's eos ids and the chat
            template's end-of-turn token (see `chattune.models.eos.stop_token_ids`).
        max_batch_size: most rows decoded together; later requests wait in the queue.
        context_length: prompt + answer limit in tokens (default: the model's).
        batch_cache: the class of the running batch's KV cache (default `kvcache.BatchCache`:
            a step writes in place); the benchmarks pass their baseline (transformers' way, a copy
            per step: `bench/baselines.py`), which has the same interface.
        prefill_tokens: prompt tokens prefilled per iteration before the running batch steps
            again (a longer single prompt still goes alone): bounds the stall a burst of
            arrivals causes.
        decode_attention: decode steps attend with `kernels.attention.decode_attention_forward`
            (sdpa models on a CPU only, where it was measured; else sdpa), in runs of rows of
            similar length (`decode_buckets`; the batch's rows are kept longest first), so
            short rows do not attend over the longest row's padding.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        adapters: Sequence[str] = (),
        default_adapter: str | None = None,
        eos_ids: Sequence[int] | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH,
        context_length: int | None = None,
        batch_cache: type | None = None,
        prefill_tokens: int = 1024,
        decode_attention: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = tuple(adapters)
        self.default_adapter = default_adapter
        if eos_ids is None:
            eos_ids = stop_token_ids(model, tokenizer)
        self.eos_ids = frozenset(eos_ids)
        self.max_batch_size = max_batch_size
        if batch_cache is None:  # transformers' cache classes: imported here, not by `schemas`
            from chattune.serving.model_server.kvcache import BatchCache as batch_cache
        self._batch_cache = batch_cache
        self.prefill_tokens = prefill_tokens
        base = model.get_base_model() if adapters else model
        self.device = next(model.parameters()).device
        # measured on CPUs only (BENCHMARKS.md): elsewhere decode steps keep sdpa's way
        decode_attention = decode_attention and self.device.type == "cpu"
        # prompts that arrive together (same adapter) are prefilled in one forward, packed
        # back to back with per-prompt attention, where the model's attention is sdpa
        # (switched to `kernels.attention.PACKED_OR_SDPA`) or flash attention; else one at a time
        self._packed_prefill, decode_on = _serving_attention(base, True, decode_attention)
        # decode steps attend in length runs (`decode_buckets`), passed through the model's
        # forward to the attention as a keyword, where the forward takes **kwargs
        forward = inspect.signature(base.forward).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in forward.values())
        self._buckets = decode_on and takes_kwargs
        self.context_length = context_length or model_context_length(model.config)
        self._cache_kw = cache_keyword(base)
        self._cv = threading.Condition()
        self._pending: deque[_Row] = deque()
        self._rows: list[_Row] = []
        self._cache: BatchCache | None = None  # the batch's KV, rows as `_rows`
        self._mask: torch.Tensor | None = None  # (B, T) long
        self._stats = EngineStats()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="chattune-engine", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        adapter: str | None = None,
        *,
        prefix: Any = None,
    ) -> Handle:
        """Queue a request; it joins the running batch at the next step.

        Args:
            prompt_ids: the prompt's token ids (chat template applied).
            params: how to decode.
            adapter: a loaded adapter's name, `"__base__"` for the base model, None for
                `default_adapter`.
            prefix: a `DynamicCache` holding this model's (and adapter's) keys and values of
                the prompt's first k tokens, 0 < k < len(prompt_ids), such as a perplexity
                pass over the same text left: only the other tokens are prefilled. The
                engine takes it over (it grows in place).

        Raises:
            InvalidParameter: unknown adapter, empty prompt, no room left in the context, or a
                `prefix` as long as the prompt.
        """
        name = adapter or self.default_adapter or BASE_ADAPTER
        if name != BASE_ADAPTER and name not in self.adapters:
            known = ", ".join(self.adapters) or "none"
            raise InvalidParameter(f"unknown adapter {name!r}; loaded adapters: {known}.")
        if not prompt_ids:
            raise InvalidParameter("the prompt is empty.")
        if len(prompt_ids) >= self.context_length:
            raise InvalidParameter(
                f"the prompt has {len(prompt_ids)} tokens; the context holds "
                f"{self.context_length}, leaving no room for an answer."
            )
        if params.max_new_tokens < 1:
            raise InvalidParameter("max_new_tokens must be >= 1.")
        if prefix is not None and not 0 < prefix.get_seq_length() < len(prompt_ids):
            raise InvalidParameter(
                f"the prefix cache holds {prefix.get_seq_length()} tokens of a "
                f"{len(prompt_ids)}-token prompt; it must hold fewer, and at least one.",
                fix="cache the prompt's tokens but its last, so the engine has one to prefill.",
            )
        handle = Handle(len(prompt_ids), name if self.adapters else None)
        handle._engine = self
        gen = torch.Generator()
        gen.manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**63))
        row = _Row(
            handle,
            params,
            list(prompt_ids),
            name,
            gen,
            Detokenizer(self.tokenizer),
            StopMatcher(params.stop),
            prefix=prefix,
        )
        with self._cv:
            if self._stopping:
                raise ServiceUnavailable(
                    "the engine is stopped (the server is shutting down).",
                    fix="retry: the gateway sends the request to another instance.",
                )
            self._stats.requests += 1
            self._pending.append(row)
            self._cv.notify()
        return handle

    def stats(self) -> dict[str, Any]:
        """The counters of `EngineStats`, plus `alive` and the batch now."""
        with self._cv:
            s = self._stats
            s.running, s.waiting = len(self._rows), len(self._pending)
            out = {k: v for k, v in vars(s).items() if k != "extra"}
        out["alive"] = self.alive()
        out["max_batch_size"] = self.max_batch_size
        return out

    def alive(self) -> bool:
        """The decode thread is running."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the decode thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # -- the decode thread ------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._stopping or self._pending or self._rows):
                        self._cv.wait()
                    if self._stopping:
                        break
                    joiners = self._take_joiners()
                try:
                    self._iterate(joiners)
                except Exception as exc:  # a bug here must not stop the decode thread
                    rows = {id(r): r for r in [*self._rows, *joiners]}.values()
                    hit = [r for r in rows if not r.handle.done]
                    log.exception("engine iteration failed; failing its %d requests", len(hit))
                    self._fail(hit, exc)
                    with self._cv:
                        self._rows = []
                    self._cache, self._mask = None, None
        for row in [*self._rows, *self._pending]:
            self._finish(row, "cancelled")
        self._rows, self._pending = [], deque()

    def _iterate(self, joiners: list[_Row]) -> None:
        """Admit `joiners`, then one decode step of the batch."""
        running = bool(self._rows)
        for group in _by_adapter(joiners):
            self._admit(group, running)
        if joiners and self._buckets:
            self._sort_rows()
        self._drop_cancelled()
        if self._rows:
            self._step()

    def _take_joiners(self) -> list[_Row]:
        """Pending requests for this iteration: while there is room in the batch and their
        prompts fit in `prefill_tokens` (always at least one); the lock is held."""
        room, used, out = self.max_batch_size - len(self._rows), 0, []
        while self._pending and len(out) < room:
            n = len(self._pending[0].prompt)
            if out and used + n > self.prefill_tokens:
                break
            out.append(self._pending.popleft())
            used += n
        return out

    def _forward(self, input_ids: torch.Tensor, adapters: list[str], **kw: Any) -> torch.Tensor:
        if self.adapters:
            kw["adapter_names"] = adapters
        return self.model(input_ids=input_ids, use_cache=True, **kw).logits[:, -1, :]

    def _prefill(self, rows: list[_Row]) -> tuple[Any, torch.Tensor, list[slice]]:
        """One forward over `rows`' prompts (one adapter), packed back to back in one row
        when there are several: (its DynamicCache, each row's last logits, each row's columns).
        A row with a `prefix` comes alone (`_admit`) and runs only the tokens after it."""
        from transformers import DynamicCache

        lens = [len(r.prompt) for r in rows]
        ends = list(itertools.accumulate(lens))
        cols = [slice(e - n, e) for e, n in zip(ends, lens, strict=True)]
        first, cache = 0, DynamicCache()
        if rows[0].prefix is not None:
            cache, rows[0].prefix = rows[0].prefix, None  # the batch cache takes it over
            first = cache.get_seq_length()
        ids = torch.tensor([[t for r in rows for t in r.prompt[first:]]], device=self.device)
        positions = torch.cat([torch.arange(first, n, device=self.device) for n in lens])[None]
        kw: dict[str, Any] = {"position_ids": positions, self._cache_kw: cache}
        if first or not self._packed_prefill:  # sdpa with its mask (one row: `_admit`)
            mask = torch.ones(1, lens[0], dtype=torch.long, device=self.device)
            kw.update(attention_mask=mask, logits_to_keep=1)
        else:  # per-prompt causal attention (kernels/attention.py), logits at each prompt's end
            # (one prompt too: its kernel beat sdpa's, 18.8 against 23.0 s for SmolLM2 over
            # 8,128 tokens in bf16 on this project's AVX512-BF16 CPU)
            cu = torch.tensor([0, *ends], dtype=torch.int32, device=self.device)
            kw.update(
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens),
                max_length_k=max(lens), logits_to_keep=torch.tensor(ends, device=self.device) - 1,
            )  # fmt: skip
        if self.adapters:
            kw["adapter_names"] = [rows[0].adapter]
        logits = self.model(input_ids=ids, use_cache=True, **kw).logits[0]
        return kw[self._cache_kw], logits, cols

    def _admit(self, rows: list[_Row], running: bool) -> None:
        """Prefill `rows` (one adapter) together, sample their first tokens, add them to the
        batch. If a packed prefill fails, each row is retried alone, so only a bad one fails."""
        for r in [r for r in rows if r.handle.cancelled.is_set()]:
            self._finish(r, "cancelled")
        rows = [r for r in rows if not r.handle.cancelled.is_set()]
        if not rows:
            return
        if len(rows) > 1 and (not self._packed_prefill or any(r.prefix is not None for r in rows)):
            for r in rows:
                self._admit([r], running)
            return
        t0 = time.perf_counter()
        cached = rows[0].prefix.get_seq_length() if rows[0].prefix is not None else 0
        try:
            cache, logits, cols = self._prefill(rows)
            tokens = [sample_next(logits[i], r.params, r.gen) for i, r in enumerate(rows)]
        except Exception as exc:
            if len(rows) > 1:
                log.warning(
                    "packed prefill of %d requests failed (%s); one at a time", len(rows), exc
                )
                for r in rows:
                    self._admit([r], running)
                return
            log.exception("prefill failed for request %s", rows[0].handle.id)
            self._fail(rows, exc)
            return
        with self._cv:
            self._stats.prefills += len(rows)
            self._stats.prefill_forwards += 1
            self._stats.prompt_tokens += sum(len(r.prompt) for r in rows)
            self._stats.cached_prompt_tokens += cached
            self._stats.prefill_seconds += time.perf_counter() - t0
            self._stats.joined_running += running * len(rows)
        for i, (row, token, c) in enumerate(zip(rows, tokens, cols, strict=True)):
            if not self._accept(row, token, logits[i]):
                self._join(row, cache, c)

    def _join(self, row: _Row, cache: Any, cols: slice) -> None:
        n = cols.stop - cols.start
        mask = torch.ones(1, n, dtype=torch.long, device=self.device)
        if self._cache is None:
            self._cache, self._mask = self._batch_cache.from_prefill(cache, cols), mask
        else:
            assert self._mask is not None
            self._cache.add_row(cache, cols)
            w = max(self._mask.shape[1], n)  # left-pad the shorter side
            pad = torch.nn.functional.pad
            self._mask = torch.cat(
                [pad(self._mask, (w - self._mask.shape[1], 0)), pad(mask, (w - n, 0))]
            )
        with self._cv:
            self._rows.append(row)

    def _step(self) -> None:
        """One decode step: every row's next token in one forward pass."""
        assert self._mask is not None
        rows = self._rows
        ids = torch.tensor([[r.next_token] for r in rows], device=self.device)
        mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        positions = mask.sum(dim=1, keepdim=True) - 1  # (B, 1): real tokens before this one
        kw: dict[str, Any] = {self._cache_kw: self._cache}
        if self._buckets:
            runs = decode_buckets((positions[:, 0] + 1).tolist())
            if len(runs) > 1:
                kw["decode_buckets"] = runs
        t0 = time.perf_counter()
        try:
            logits = self._forward(
                ids, [r.adapter for r in rows], attention_mask=mask, position_ids=positions, **kw
            )
            greedy = torch.argmax(logits, dim=-1).tolist()
            tokens = [
                greedy[i] if r.params.greedy else sample_next(logits[i], r.params, r.gen)
                for i, r in enumerate(rows)
            ]
        except Exception as exc:
            log.exception("decode step failed for %d rows", len(rows))
            self._fail(rows, exc)
            self._rows, self._cache, self._mask = [], None, None
            return
        self._mask = mask
        with self._cv:
            self._stats.steps += 1
            self._stats.rows_stepped += len(rows)
            self._stats.step_seconds += time.perf_counter() - t0
            self._stats.max_batch = max(self._stats.max_batch, len(rows))
        done = [
            self._accept(r, t, logits[i]) for i, (r, t) in enumerate(zip(rows, tokens, strict=True))
        ]
        full = [i for i, r in enumerate(rows) if not done[i] and self._room(r) <= 0]
        for i in full:
            self._finish(rows[i], "length")
            done[i] = True
        self._keep([i for i, d in enumerate(done) if not d])

    def _room(self, row: _Row) -> int:
        """Tokens the context still holds for this row (its next token included)."""
        return self.context_length - len(row.prompt) - row.handle.completion_tokens

    def _accept(self, row: _Row, token: int, logits: torch.Tensor) -> bool:
        """Record a token sampled from `logits` (V,); True if the row is finished."""
        h = row.handle
        h.token_ids.append(token)
        h.completion_tokens += 1
        with self._cv:
            self._stats.generated_tokens += 1
        if token in self.eos_ids:
            self._finish(row, "stop")
            return True
        if row.params.logprobs is not None:
            h.logprobs.append(token_logprobs(logits, token, row.params.logprobs))
        text, hit = row.stops.feed(row.detok.add(token))
        if text:
            h._put(_TEXT, (text, len(h.logprobs)))
        if hit:
            self._finish(row, "stop", flush=False)
            return True
        if h.completion_tokens >= row.params.max_new_tokens or self._room(row) <= 0:
            self._finish(row, "length")
            return True
        row.next_token = token
        return False

    def _finish(self, row: _Row, reason: str, *, flush: bool = True) -> None:
        h = row.handle
        if flush and reason != "cancelled":
            text, hit = row.stops.feed(row.detok.flush())
            text += "" if hit else row.stops.flush()
            if text:
                h._put(_TEXT, (text, len(h.logprobs)))
        h.finish_reason = reason
        with self._cv:
            self._stats.finished += 1
            self._stats.cancelled += reason == "cancelled"
        h._put(_END, reason)

    def _fail(self, rows: list[_Row], exc: BaseException) -> None:
        with self._cv:
            self._stats.failed += len(rows)
        for r in rows:
            r.handle.error = exc
            r.handle._put(_ERROR, exc)

    def _drop_cancelled(self) -> None:
        keep = []
        for i, r in enumerate(self._rows):
            if r.handle.cancelled.is_set():
                self._finish(r, "cancelled")
            else:
                keep.append(i)
        if len(keep) < len(self._rows):
            self._keep(keep)

    def _sort_rows(self) -> None:
        """Order the batch's rows longest first, so that `decode_buckets` finds short runs."""
        if self._mask is None:  # every joiner finished at its first token
            return
        lengths = self._mask.sum(dim=1).tolist()
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        self._keep(order)

    def _keep(self, keep: list[int]) -> None:
        """Keep only rows `keep` of the batch, in that order, and trim all-padding columns
        on the left."""
        if keep == list(range(len(self._rows))):
            return
        with self._cv:
            self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._mask is not None
        idx = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, idx)
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # first column with a real token
        self._mask = mask[:, start:]
        self._cache.keep(keep, start)
