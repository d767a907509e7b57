"""`chattune up --watch`'s watcher: the backoff schedule and error handling with a fake clock
and a recorded restart; then with real supervisors (fake model servers): one supervisor
however many start it at once, a hung one replaced, a deleted endpoint left deleted."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chattune.serving import endpoints as E
from chattune.serving import service
from chattune.serving.control import lifecycle, watch
from chattune.serving.control.instances import free_port
from chattune.serving.control.watch import Backoff, Watcher
from chattune.workspace.processes import pid_alive
from tests.serving.control.supervised import fake_model, processes_under, serving_ws, wait_for
from tests.serving.control.test_supervisor import deploy, score, send_traffic

__all__ = ["fake_model", "serving_ws"]  # fixtures


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_reset() -> None:
    b = Backoff(base_s=1.0, cap_s=60.0)
    waits = []
    for _ in range(9):
        assert b.due(b.next_at)
        now = b.next_at
        b.record(now)
        waits.append(b.next_at - now)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert not b.due(b.next_at - 0.01)
    b.reset()
    assert b.attempts == 0 and b.due(0.0)


@dataclass
class Recorded:
    """A watcher on a fake clock whose restarts are recorded, not run."""

    watcher: Watcher
    clock: Clock
    starts: list[tuple[float, str, int | None]]  # (time, endpoint, pid to replace)
    alive: set[int]  # the pids that run and answer
    lines: list[str]  # the watcher's log


@pytest.fixture
def recorded(workspace, monkeypatch: pytest.MonkeyPatch) -> Recorded:
    """`spawn_supervisor` records its call and returns a fresh fake pid; `alive` decides
    which pids run and answer."""
    clock, lines = Clock(), []
    rec = Recorded(Watcher(workspace, log=lines.append, clock=clock), clock, [], set(), lines)

    def spawn(ws, name: str, *, replace: int | None = None, wait: bool = True) -> int:
        rec.starts.append((clock.now, name, replace))
        return 100_000 + len(rec.starts)

    monkeypatch.setattr(watch, "spawn_supervisor", spawn)
    monkeypatch.setattr(watch, "pid_alive", lambda pid: pid in rec.alive)
    monkeypatch.setattr(watch, "serving", lambda ws, ep: ep.pid in rec.alive)
    monkeypatch.setattr(watch, "gateway_answers", lambda client, ep: ep.pid in rec.alive)
    return rec


def record_pid(ws, name: str, pid: int) -> None:
    E.set_endpoint_fields(ws, name, bump=False, pid=pid, state="running")


def test_restarts_at_once_then_backs_off_and_starts_over_once_stable(recorded, workspace) -> None:
    r = recorded
    E.create_endpoint(workspace, "bo-ep", port=free_port())
    record_pid(workspace, "bo-ep", 4242)  # its supervisor died (4242 is not in `alive`)
    # each restart dies at once (the fake pids never run): attempts at 0, 1, 3, 7, 15 s
    for t in [x / 2 for x in range(31)]:  # 0 to 15 s
        r.clock.now = t
        r.watcher.check()
        if r.starts:
            record_pid(workspace, "bo-ep", 100_000 + len(r.starts))
    assert [s[0] for s in r.starts] == [0, 1, 3, 7, 15]
    assert all(s[1:] == ("bo-ep", None) for s in r.starts)
    restarts = [ln for ln in r.lines if "restarted it" in ln]
    assert "supervisor (pid 4242) is not running" in restarts[0]
    assert [f"attempt {n}," in ln for n, ln in enumerate(restarts, 1)] == [True] * 5
    assert sum("next restart in" in ln for ln in r.lines) == 4  # once per wait, not per check

    r.alive.add(100_005)  # the fifth one runs and answers
    for t in (16.0, 40.0, 76.0):  # answering from 16 s: stable at 76 s
        r.clock.now = t
        r.watcher.check()
    assert len(r.starts) == 5
    r.alive.clear()  # it dies: restarted at once, as attempt 1 again
    r.clock.now = 77.0
    r.watcher.check()
    assert r.starts[-1][0] == 77.0 and "attempt 1," in r.lines[-1]


def test_a_gateway_that_stops_answering_is_replaced(recorded, workspace, monkeypatch) -> None:
    E.create_endpoint(workspace, "deaf-ep", port=free_port())
    record_pid(workspace, "deaf-ep", 4242)
    recorded.alive.add(4242)
    monkeypatch.setattr(watch, "gateway_answers", lambda client, ep: False)
    for t in range(watch.HEALTH_FAILS):
        recorded.clock.now = float(t)
        recorded.watcher.check()
    assert recorded.starts == [(2.0, "deaf-ep", 4242)]  # the third failure: replace 4242
    why = "did not answer /health 3 checks in a row (supervisor pid 4242)"
    assert why in recorded.lines[-1]


def test_errors_are_logged_and_the_next_check_goes_on(recorded, workspace, monkeypatch) -> None:
    r = recorded
    for name in ("bad-ep", "fail-ep", "good-ep"):
        E.create_endpoint(workspace, name, port=free_port())
    record_pid(workspace, "bad-ep", 777)
    real_list, real_spawn = watch.list_endpoints, watch.spawn_supervisor

    def list_once_broken(ws):
        monkeypatch.setattr(watch, "list_endpoints", real_list)
        raise OSError("database is locked")

    def alive(pid):
        if pid == 777:
            raise PermissionError("/proc/777: no access")
        return pid in r.alive

    def spawn(ws, name, **kw):
        if name == "fail-ep":
            raise RuntimeError("no fork for you")
        return real_spawn(ws, name, **kw)

    monkeypatch.setattr(watch, "list_endpoints", list_once_broken)
    monkeypatch.setattr(watch, "pid_alive", alive)
    monkeypatch.setattr(watch, "spawn_supervisor", spawn)
    r.watcher.check()
    assert r.lines == ["error: cannot list the endpoints (OSError: database is locked)"]
    r.watcher.check()
    assert "error: checking endpoint bad-ep (PermissionError: /proc/777: no access)" in r.lines
    failed = "restart attempt 1 failed (RuntimeError: no fork for you)"
    assert any(ln.startswith("endpoint fail-ep: no supervisor;") and failed in ln for ln in r.lines)
    assert [s[1] for s in r.starts] == ["good-ep"]  # the others are still looked after

    def attempts() -> list[str]:
        return [ln for ln in r.lines if ln.startswith("endpoint fail-ep") and "attempt" in ln]

    r.clock.now = 0.5  # a failed attempt counts: the next one backs off
    r.watcher.check()
    assert len(attempts()) == 1
    r.clock.now = 1.0
    r.watcher.check()
    assert len(attempts()) == 2 and "restart attempt 2 failed" in attempts()[-1]


# -- with real supervisors ----------------------------------------------------------------------


def supervisors(marker: Path) -> list[int]:
    return [
        pid
        for pid in processes_under(str(marker))
        if "chattune.serving.control.supervisor" in Path(f"/proc/{pid}/cmdline").read_text()
    ]


def kill_supervisor(ws, name: str) -> int:
    pid = E.get_endpoint(ws, name).pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), what=f"supervisor {pid} gone")
    return pid


@contextmanager
def watching(ws, check_s: float = 0.05) -> Iterator[list[str]]:
    """A watcher in a thread for the block; yields its log lines."""
    lines: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=Watcher(ws, log=lines.append, check_s=check_s).run, args=(stop,)
    )
    thread.start()
    try:
        yield lines
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.integration
def test_racing_starters_start_one_supervisor(serving_ws, tmp_path: Path) -> None:
    ws = serving_ws
    service.create_endpoint(ws, "race-ep")
    victim = kill_supervisor(ws, "race-ep")
    pids: list[int | None] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        pids.append(lifecycle.spawn_supervisor(ws, "race-ep"))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [p for p in pids if p is not None]
    assert len(started) == 1 and started[0] != victim
    assert supervisors(tmp_path) == started
    lifecycle.wait_running(ws, "race-ep")
    with lifecycle.endpoint_lock(ws, "race-ep"):  # someone else is on it: a watcher waits
        kill_supervisor(ws, "race-ep")
        assert lifecycle.spawn_supervisor(ws, "race-ep", wait=False) is None
    assert lifecycle.spawn_supervisor(ws, "race-ep", wait=False) is not None


@pytest.mark.integration
def test_a_hung_supervisor_is_replaced(serving_ws, fake_model) -> None:
    ws = serving_ws
    ep = service.create_endpoint(ws, "hung-sup")
    deploy(ws, "hung-sup", "blue", fake_model())
    send_traffic(ws, "hung-sup", {"blue": 100})
    hung = ep.pid
    os.kill(hung, signal.SIGSTOP)  # alive, but its gateway answers nothing
    with watching(ws, check_s=0.2) as lines:

        def serves() -> bool:
            try:
                return score(ep).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serves, timeout_s=120, what="200 from a new supervisor")
    assert not pid_alive(hung)  # SIGKILLed: a stopped process ignores SIGTERM
    assert E.get_endpoint(ws, "hung-sup").pid != hung
    why = f"did not answer /health 3 checks in a row (supervisor pid {hung})"
    assert any(why in ln for ln in lines), lines


@pytest.mark.integration
def test_deleting_a_watched_endpoint_leaves_nothing_running(serving_ws, tmp_path: Path) -> None:
    ws = serving_ws
    service.create_endpoint(ws, "del-ep")
    with watching(ws, check_s=0.01) as lines:
        service.delete_endpoint(ws, "del-ep")
        wait_for(lambda: "del-ep" not in {e.name for e in E.list_endpoints(ws)})
    assert E.list_endpoints(ws) == []
    assert supervisors(tmp_path) == [], lines
