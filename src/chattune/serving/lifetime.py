"""How long a request may run, and what happens when its client leaves: handled here once,
for the gateway and the model server alike.

A `Deadline` is a point on the event loop's clock. The gateway starts one from the
deployment's `request_timeout_ms` and sends what is left of it upstream in `TIMEOUT_HEADER`;
the model server reads that header back into a `Deadline`. `within` runs a request's work
until it is done, the deadline passes, or the client disconnects, and cancels the work in
the last two cases (cancelling is what stops a generation or closes the upstream
connection). `stream_within` does the same for each item of a stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

from chattune.errors import ChattuneError, ClientDisconnected, InvalidRequest
from chattune.serving.headers import TIMEOUT_HEADER

T = TypeVar("T")


@dataclass(frozen=True)
class Deadline:
    """When a request's time is up (`at`, on the running loop's clock; None: never)."""

    at: float | None

    @classmethod
    def after_ms(cls, ms: int) -> Deadline:
        """`ms` milliseconds from now."""
        return cls(asyncio.get_running_loop().time() + ms / 1000)

    @classmethod
    def from_header(cls, request: Request) -> Deadline:
        """The budget the gateway sent in `TIMEOUT_HEADER` (none: no deadline).

        Raises:
            InvalidRequest: the header is not a whole number of milliseconds > 0.
        """
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return cls(None)
        ms = int(raw) if raw.isdigit() else 0
        if ms <= 0:
            raise InvalidRequest(
                f"{TIMEOUT_HEADER} is {raw!r}; send a whole number of milliseconds > 0.",
                param=TIMEOUT_HEADER,
            )
        return cls.after_ms(ms)

    def left_ms(self) -> int:
        """Milliseconds left (at least 1: the header's value must stay > 0)."""
        if self.at is None:
            raise ValueError("this deadline is unbounded")
        return max(1, int((self.at - asyncio.get_running_loop().time()) * 1000))

    def header(self) -> dict[str, str]:
        """The header that hands the time left to the next hop."""
        return {} if self.at is None else {TIMEOUT_HEADER: str(self.left_ms())}

    def limit(self) -> asyncio.Timeout:
        """`async with deadline.limit():` raises TimeoutError at the deadline."""
        return asyncio.timeout_at(self.at)


async def within(
    request: Request,
    work: Coroutine[Any, Any, T],
    deadline: Deadline,
    timed_out: Callable[[], ChattuneError],
) -> T:
    """Await `work` until it is done, the deadline passes or the client disconnects; in the
    last two cases `work` is cancelled (its cleanup runs) before the error is raised.

    Raises:
        ChattuneError: `timed_out()` past the deadline.
        ClientDisconnected: the client left first.
    """
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnect(request))
    try:
        async with deadline.limit():
            done, _ = await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        await _cancel(task)
        raise timed_out() from None
    except BaseException:  # this request itself was cancelled (the server is shutting down)
        task.cancel()
        raise
    finally:
        left.cancel()
    if task in done:
        return task.result()
    await _cancel(task)
    raise ClientDisconnected("the client closed the request before the answer was ready.")


async def stream_within(
    items: AsyncIterator[T], deadline: Deadline, timed_out: Callable[[], ChattuneError]
) -> AsyncIterator[T]:
    """The items of `items` as they come, each awaited no later than the deadline. (A client
    that leaves mid-stream closes the response, which closes this generator.)

    Raises:
        ChattuneError: `timed_out()` past the deadline.
    """
    while True:
        try:
            async with deadline.limit():
                item = await anext(items)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise timed_out() from None
        yield item


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    await asyncio.wait({task})  # let its cleanup run (close the upstream connection, cancel)


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read whole already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
