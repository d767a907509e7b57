"""Encoding the conversations of the preprocess step, in this process or in worker processes.

`encode_chunks` takes batches of conversations in file order and yields each batch encoded and
truncated (`EncodedChunk`, flat int32 arrays) in the same order, whichever way it runs:

- in this process (`workers` 1): `ChatEncoder.encode_stream`, the Rust tokenizer working on
  batch k+1 in a thread (with its own thread pool) while Python labels batch k;
- in `workers` processes: a `ProcessPoolExecutor` whose workers each make the same encoder once
  (`ChatEncoder.from_state`) and render, tokenize, label and truncate whole batches, one
  tokenizer thread each, so the Python half of the work runs in parallel too. Workers start
  from a fork server that has imported only this module (not torch, nor transformers'
  tokenizer classes): about a second to start, a small memory footprint per worker. At most
  `_WINDOW_PER_WORKER` batches per worker are in flight, and results are taken in order, so
  the files written are byte-identical to the single-process ones and memory stays flat.

A template that fails in a worker raises the same `TemplateRenderError` (the template's
exception travels as its type's name and text); a worker that dies (killed, out of memory)
raises `WorkerFailed` instead of hanging.

Example:
    >>> for (path, items), chunk in encode_chunks(encoder, batches, 512, workers=2):
    ...     chunk.rows(), chunk.ids[chunk.offsets[0] : chunk.offsets[1]]
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import numpy as np

from chattune.errors import ChattuneError
from chattune.train.chat_encoder import ChatEncoder, Encoded, Messages, TemplateRenderError

T = TypeVar("T")

# Fewer valid rows than this: stay in this process. From the development measurements
# (bench/README.md, T3): a pool costs about 1.5 s of CPU to start (the fork server's imports
# 0.8-0.9 s, each worker's tokenizer about 0.3 s), and the one-process path already keeps
# about 1.5 of 2 cores busy (~1.5 ms of CPU per SmolLM2-sized conversation), so the pool can
# win at most the idle half core: below ~4,000 conversations (~6 s of CPU) that is less than
# its start.
POOL_MIN_ROWS = 4096
_WINDOW_PER_WORKER = 2  # batches submitted per worker ahead of the one being written
_WORKER_PIECE = 256  # conversations a worker encodes at a time
_WORKER_TOKENIZER_THREADS = 1  # per worker process when there are 2 or more of them
_START_METHOD = "forkserver"
# what the fork server imports once, so that each worker forked from it starts at once
_PRELOAD = [__name__, "transformers.utils.chat_template_utils"]


@dataclass
class EncodedChunk:
    """A batch of conversations encoded and truncated to `max_len`, as flat arrays (cheap to
    send between processes, written to parquet without per-token Python work).

    Row i's kept tokens are `ids[offsets[i]:offsets[i + 1]]`, its labels the same slice of
    `labels`; `tokens[i]` is its length before truncation (or, when only a prefix was
    tokenized, more than `max_len`); `first_label[i]` the index of its first labelled token
    (-1: none); `label_tokens[i]` the labels kept within `max_len`. `exact` and `prefix` count
    the conversations labelled by exact rendering and those tokenized only up to a boundary.
    """

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    tokens: np.ndarray
    first_label: np.ndarray
    label_tokens: np.ndarray
    exact: int = 0
    prefix: int = 0

    @classmethod
    def pack(
        cls, encoded: list[Encoded], max_len: int, exact: int = 0, prefix: int = 0
    ) -> EncodedChunk:
        """The chunk of `encoded` (from `ChatEncoder.encode`) truncated to `max_len`."""
        n = len(encoded)
        kept = [min(len(e.input_ids), max_len) for e in encoded]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(kept, out=offsets[1:])
        total = int(offsets[-1])
        ids = chain.from_iterable(e.input_ids[:k] for e, k in zip(encoded, kept, strict=True))
        labels = chain.from_iterable(e.labels[:k] for e, k in zip(encoded, kept, strict=True))
        return cls(
            ids=np.fromiter(ids, np.int32, count=total),
            labels=np.fromiter(labels, np.int32, count=total),
            offsets=offsets,
            tokens=np.fromiter((len(e.input_ids) for e in encoded), np.int32, count=n),
            first_label=np.fromiter(
                (-1 if e.first_label is None else e.first_label for e in encoded), np.int32, n
            ),
            label_tokens=np.fromiter(
                (sum(max(0, min(b, max_len) - a) for a, b in e.label_ranges) for e in encoded),
                np.int32,
                count=n,
            ),
            exact=exact,
            prefix=prefix,
        )

    @classmethod
    def concat(cls, parts: list[EncodedChunk]) -> EncodedChunk:
        """One chunk of the rows of `parts`, in order."""
        starts = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [
            p.offsets[1:] + s for p, s in zip(parts, starts, strict=True)
        ]
        return cls(
            ids=np.concatenate([p.ids for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            offsets=np.concatenate(offsets),
            tokens=np.concatenate([p.tokens for p in parts]),
            first_label=np.concatenate([p.first_label for p in parts]),
            label_tokens=np.concatenate([p.label_tokens for p in parts]),
            exact=sum(p.exact for p in parts),
            prefix=sum(p.prefix for p in parts),
        )

    def rows(self) -> int:
        """The number of conversations in the chunk."""
        return len(self.tokens)


class WorkerFailed(ChattuneError):
    """A preprocess worker process stopped without an answer (killed, out of memory)."""


def plain(messages: Messages) -> Messages:
    """Only `role` and `content` of each message, as the template is given them."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def encode_chunks(
    encoder: ChatEncoder,
    batches: Iterable[tuple[T, list[Messages]]],
    max_len: int,
    pool: EncoderPool | None = None,
) -> Iterator[tuple[T, EncodedChunk]]:
    """Each `(payload, conversations)` batch as `(payload, EncodedChunk)`, in order: in `pool`
    when one is given, in this process otherwise.

    Raises:
        TemplateRenderError: a conversation failed to render; `payload` is its batch's.
        WorkerFailed: a worker process died.
    """
    if pool is None:
        yield from _in_process(encoder, batches, max_len)
    else:
        yield from pool.map(batches, max_len)


def _in_process(
    encoder: ChatEncoder, batches: Iterable[tuple[T, list[Messages]]], max_len: int
) -> Iterator[tuple[T, EncodedChunk]]:
    plain_batches = ((payload, [plain(m) for m in convs]) for payload, convs in batches)
    exact, prefix = encoder.exact_count, encoder.prefix_count
    for payload, encoded in encoder.encode_stream(plain_batches, max_len):
        # the counters grew by this batch's: `_finish` runs just before each yield
        chunk = EncodedChunk.pack(
            encoded, max_len, encoder.exact_count - exact, encoder.prefix_count - prefix
        )
        exact, prefix = encoder.exact_count, encoder.prefix_count
        yield payload, chunk


# -- the pool -------------------------------------------------------------------------------------
_ENCODER: ChatEncoder | None = None  # a worker's own encoder, made by `_start_worker`


def _start_worker(state: dict[str, Any], threads: int) -> None:
    """A worker's initializer: its tokenizer threads, then its encoder."""
    global _ENCODER
    if threads == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # encode_batch in the calling thread
    else:
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    _ENCODER = ChatEncoder.from_state(state)


def _encode_in_worker(pickled: bytes, max_len: int) -> EncodedChunk:
    """A batch (pickled: see `EncoderPool.map`) encoded in pieces of `_WORKER_PIECE` (a
    worker's memory grows with the tokenizer's encodings of the piece: ~48 MB for 1,024
    SmolLM2-sized conversations, ~16 MB for 256)."""
    encoder = _ENCODER
    assert encoder is not None, "_start_worker did not run"
    convs: list[Messages] = pickle.loads(pickled)  # already plain
    parts = []
    for at in range(0, len(convs), _WORKER_PIECE):
        exact, prefix = encoder.exact_count, encoder.prefix_count
        piece = convs[at : at + _WORKER_PIECE]
        try:
            encoded = encoder.encode(piece, max_len)
        except TemplateRenderError as exc:
            raise TemplateRenderError(at + exc.index, exc.error) from exc.error
        exact, prefix = encoder.exact_count - exact, encoder.prefix_count - prefix
        parts.append(EncodedChunk.pack(encoded, max_len, exact, prefix))
    return parts[0] if len(parts) == 1 else EncodedChunk.concat(parts)


def _context() -> Any:
    ctx = multiprocessing.get_context(_START_METHOD)
    if _START_METHOD == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def warm_up() -> None:
    """Start the fork server now: it imports `_PRELOAD` in the background (about a second)
    while this process goes on (loading the tokenizer), and `EncoderPool` forks from it."""
    _context()
    if _START_METHOD == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _ready() -> int:
    return os.getpid()


class EncoderPool:
    """`workers` processes that encode batches with `encoder`'s twin. Start it early
    (`start()` returns at once; the processes come up in the background while the caller
    reads), use `map`, and `close()` it (or use `with`).

    Args:
        encoder: the encoder to copy into each worker (`ChatEncoder.state()`).
        workers: the number of worker processes (2 or more to be of use).
    """

    def __init__(self, encoder: ChatEncoder, workers: int) -> None:
        ctx = _context()
        threads = _WORKER_TOKENIZER_THREADS if workers > 1 else 0
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_start_worker,
            initargs=(encoder.state(), threads),
        )
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def start(self) -> EncoderPool:
        """Bring the workers up in a background thread (the first submit blocks until the
        fork server has imported this module)."""

        def up() -> None:
            try:
                futures = [self._executor.submit(_ready) for _ in range(self.workers)]
                for f in futures:
                    f.result()
            except BaseException as exc:  # raised by `wait_started`
                self._start_error = exc

        self._starter = threading.Thread(target=up, name="preprocess-pool-start", daemon=True)
        self._starter.start()
        return self

    def map(
        self, batches: Iterable[tuple[T, list[Messages]]], max_len: int
    ) -> Iterator[tuple[T, EncodedChunk]]:
        """`encode_chunks` in the workers: batches submitted ahead, results yielded in order.

        Raises:
            TemplateRenderError: a conversation failed to render; `payload` is its batch's.
            WorkerFailed: a worker process died (before or while encoding).
        """
        try:
            self.wait_started()
            pending: deque[tuple[T, Future]] = deque()
            window = _WINDOW_PER_WORKER * self.workers
            for payload, convs in batches:
                # pickled here, once: the executor holds each submitted call's arguments until
                # its result is back, and as bytes a batch is ~5x smaller than as Python objects
                pickled = pickle.dumps([plain(m) for m in convs], pickle.HIGHEST_PROTOCOL)
                future = self._executor.submit(_encode_in_worker, pickled, max_len)
                pending.append((payload, future))
                if len(pending) > window:
                    yield self._result(*pending.popleft())
            while pending:
                yield self._result(*pending.popleft())
        except BrokenProcessPool as exc:
            raise WorkerFailed(
                f"A preprocess worker process stopped without an answer ({exc}); it may have "
                "been killed, for instance by the kernel when memory ran out.",
                fix="run again; if it fails again, set `workers` to 1 (all in one process) "
                "or give the machine more memory",
            ) from exc

    def wait_started(self) -> list[int]:
        """Wait for `start()` to finish; the worker processes' ids.

        Raises:
            BrokenProcessPool: a worker died while starting.
        """
        if self._starter is not None:
            self._starter.join()
        if self._start_error is not None:
            raise self._start_error
        return sorted(self._executor._processes or {})

    def _result(self, payload: T, future: Future) -> tuple[T, EncodedChunk]:
        try:
            return payload, future.result()
        except TemplateRenderError as exc:
            raise TemplateRenderError(exc.index, exc.error, payload) from exc.error

    def close(self) -> None:
        """Stop the workers: queued batches are cancelled, running ones finish."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
