"""`LROPoller`: what Azure's `begin_*` operations return. The work runs in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class LROPoller(Generic[T]):
    """A long-running operation: `.wait()`, `.result()`, `.done()`, `.status()`.

    The operation starts at once in a background thread; `result()` returns its value or
    raises its exception, as `azure.core.polling.LROPoller` does.
    """

    def __init__(self, work: Callable[[], T], name: str = "operation") -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], T]) -> None:
        try:
            self._value = work()
        except BaseException as exc:
            self._error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def status(self) -> str:
        if not self.done():
            return "InProgress"
        return "Failed" if self._error else "Succeeded"

    def wait(self, timeout: float | None = None) -> None:
        """Block until the operation ends (or `timeout` seconds); raises its error."""
        self._thread.join(timeout)
        if self.done() and self._error is not None:
            raise self._error

    def result(self, timeout: float | None = None) -> T:
        """The operation's value, after waiting for it; raises its error."""
        self.wait(timeout)
        if not self.done():
            raise TimeoutError(f"the operation is still running after {timeout} s")
        return self._value
