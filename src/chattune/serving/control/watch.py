"""`chattune up --watch`: keep every endpoint of a workspace running, without a person.

Every `check_s` seconds the watcher looks at each endpoint (but one being deleted):

- its supervisor (the pid in the endpoint's row) is not running: start one;
- its supervisor runs and has published its config, so its gateway should answer, but
  `GET /health` failed `HEALTH_FAILS` checks in a row, or it has not published anything
  `START_TIMEOUT_S` after it started: it hangs; stop it (SIGTERM, then SIGKILL) and start
  a new one.

Restarts of one endpoint back off exponentially (`Backoff`: 1, 2, 4 ... 60 s between
attempts), so a supervisor that cannot start (its port taken, its log says why) is not
restarted in a tight loop; once it has answered for `STABLE_S` the count starts again. The
restart is `lifecycle.spawn_supervisor`, the function `chattune up` and `endpoint create`
use, under the endpoint's lock: two watchers, or a watcher and `chattune up`, never both start
one.

The watcher only watches: stopping it leaves the endpoints running. Its own errors (the
database busy, an endpoint deleted between two reads) are logged, and the next check goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from chattune.serving.control.lifecycle import gateway_answers, serving, spawn_supervisor
from chattune.serving.endpoints import Endpoint, list_endpoints
from chattune.workspace import Workspace
from chattune.workspace.processes import pid_alive

CHECK_S = 2.0  # the period of the checks: a dead supervisor is seen this fast
HEALTH_FAILS = 3  # `/health` failures in a row that make a running supervisor hung
START_TIMEOUT_S = 120.0  # a supervisor that has published no config this long after start hangs
STABLE_S = 60.0  # answering this long after a restart: the backoff starts again from the base

Log = Callable[[str], None]


def say(msg: str) -> None:
    """The watcher's default log: one timestamped line on stdout, flushed (a journal reads it)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}", flush=True)


@dataclass
class Backoff:
    """Exponential backoff between restarts of one endpoint: after attempt n, the next waits
    `min(cap_s, base_s * 2 ** (n - 1))` seconds (1, 2, 4 ... 60 with the defaults). The
    first attempt is at once."""

    base_s: float = 1.0
    cap_s: float = 60.0
    attempts: int = 0
    next_at: float = 0.0  # monotonic: no attempt before

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, now: float) -> int:
        """An attempt at `now`; returns its number (1 for the first since the last reset)."""
        self.attempts += 1
        self.next_at = now + min(self.cap_s, self.base_s * 2 ** (self.attempts - 1))
        return self.attempts

    def reset(self) -> None:
        self.attempts, self.next_at = 0, 0.0


@dataclass
class _Watched:
    """What the watcher knows of one endpoint between checks."""

    backoff: Backoff
    pid: int | None = None  # the supervisor these fields are about
    seen_at: float = 0.0  # when the watcher first saw `pid`
    health_fails: int = 0  # `/health` failures in a row
    answering_since: float | None = None
    waiting: bool = False  # "next restart in ..." was logged for the current wait


@dataclass
class Watcher:
    """Checks every endpoint of `ws` and restarts what died or hangs; see the module docstring.

    Example:
        >>> stop = threading.Event()
        >>> Watcher(Workspace.open()).run(stop)   # until another thread sets `stop`
    """

    ws: Workspace
    log: Log = say
    check_s: float = CHECK_S
    backoff: Callable[[], Backoff] = Backoff
    clock: Callable[[], float] = time.monotonic
    _watched: dict[str, _Watched] = field(default_factory=dict, init=False, repr=False)
    _client: httpx.Client = field(
        default_factory=lambda: httpx.Client(trust_env=False), init=False, repr=False
    )

    def run(self, stop: threading.Event) -> None:
        """Check every `check_s` seconds until `stop` is set."""
        try:
            while not stop.is_set():
                self.check()
                stop.wait(self.check_s)
        finally:
            self._client.close()

    def check(self) -> None:
        """Check every endpoint once, restarting what needs it. Never raises: an error is
        logged and the next check tries again."""
        try:
            endpoints = list_endpoints(self.ws)
        except Exception as exc:  # the database busy or unreadable: the next check retries
            self.log(f"error: cannot list the endpoints ({type(exc).__name__}: {exc})")
            return
        names = {ep.name for ep in endpoints}
        for gone in set(self._watched) - names:
            del self._watched[gone]
        for ep in endpoints:
            try:
                self._check(ep)
            except Exception as exc:  # one endpoint's trouble does not stop the others
                self.log(f"error: checking endpoint {ep.name} ({type(exc).__name__}: {exc})")

    def _check(self, ep: Endpoint) -> None:
        if ep.state == "deleting":
            return
        now = self.clock()
        w = self._watched.setdefault(ep.name, _Watched(self.backoff()))
        if not pid_alive(ep.pid):
            why = f"its supervisor (pid {ep.pid}) is not running" if ep.pid else "no supervisor"
            if ep.state == "failed":
                why += f" (it failed: {ep.error})"
            elif ep.state == "stopped":
                why += " (it was stopped)"
            self._restart(ep, w, now, why, replace=None)
            return
        if w.pid != ep.pid:  # a supervisor the watcher has not seen yet
            w.pid, w.seen_at, w.health_fails, w.answering_since = ep.pid, now, 0, None
        if not serving(self.ws, ep):
            if now - w.seen_at > START_TIMEOUT_S:
                why = f"its supervisor (pid {ep.pid}) has not started its gateway in "
                self._restart(ep, w, now, why + f"{START_TIMEOUT_S:.0f} s", replace=ep.pid)
            return
        if gateway_answers(self._client, ep):
            w.health_fails = 0
            if w.answering_since is None:
                w.answering_since = now
            elif now - w.answering_since >= STABLE_S and w.backoff.attempts:
                w.backoff.reset()
            return
        w.health_fails += 1
        w.answering_since = None
        if w.health_fails >= HEALTH_FAILS:
            why = (
                f"its gateway on port {ep.port} did not answer /health {w.health_fails} checks "
                f"in a row (supervisor pid {ep.pid})"
            )
            self._restart(ep, w, now, why, replace=ep.pid)

    def _restart(
        self, ep: Endpoint, w: _Watched, now: float, why: str, replace: int | None
    ) -> None:
        if not w.backoff.due(now):
            if not w.waiting:
                wait_s = w.backoff.next_at - now
                self.log(f"endpoint {ep.name}: {why}; next restart in {wait_s:.1f} s")
                w.waiting = True
            return
        try:
            pid = spawn_supervisor(self.ws, ep.name, replace=replace, wait=False)
        except Exception as exc:  # e.g. a hung one that would not die: the next attempt waits
            attempt = w.backoff.record(now)
            w.waiting = False
            self.log(
                f"endpoint {ep.name}: {why}; restart attempt {attempt} failed "
                f"({type(exc).__name__}: {exc})"
            )
            return
        if pid is None:  # another process holds its lock or started one: theirs to do
            return
        attempt = w.backoff.record(now)
        w.waiting = False
        w.pid, w.seen_at, w.health_fails, w.answering_since = pid, now, 0, None
        self.log(
            f"endpoint {ep.name}: {why}; restarted it (attempt {attempt}, supervisor pid {pid})"
        )
