"""The CLI's side of the supervisor: start it detached, signal it and wait until a change is
live, wait for deployments, stop and delete endpoints, bring every endpoint back (`up`).
`serving/service.py` composes these with the row writes; `watch.py` (`chattune up --watch`)
restarts supervisors that die or hang.

A change is live when the supervisor's status file (`supervisor.json`) acknowledges an
endpoint stamp at least as new as the one the change wrote: the CLI sends SIGHUP and waits
for that, never for a fixed time.

A supervisor is started only by `spawn_supervisor`, under the endpoint's lock
(`locks/endpoint-<name>.lock`), and only when none runs: `chattune up`, `endpoint create`
and any number of watchers may race to start one, and one starts. `delete_endpoint` holds
the same lock, so nothing restarts an endpoint while it is being deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator

import httpx

from chattune.errors import DeploymentFailed, EndpointError, EndpointNotFound
from chattune.serving.control.instances import port_free
from chattune.serving.control.supervisor import status_path
from chattune.serving.deployments import (
    Deployment,
    get_deployment,
    list_deployments,
    list_instances,
)
from chattune.serving.endpoints import (
    Endpoint,
    delete_endpoint_rows,
    endpoint_dir,
    get_endpoint,
    list_endpoints,
    set_endpoint_fields,
)
from chattune.workspace import Workspace, file_lock
from chattune.workspace.processes import pid_alive, spawn_detached

POLL_S = 0.02
HEALTH_TIMEOUT_S = 2.0  # a gateway slower than this to answer `/health` does not answer


def log_path(ws: Workspace, endpoint: str) -> os.PathLike:
    return endpoint_dir(ws, endpoint) / "supervisor.log"


def _log_tail(ws: Workspace, endpoint: str, n: int = 5) -> str:
    try:
        lines = log_path(ws, endpoint).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


@contextlib.contextmanager
def endpoint_lock(ws: Workspace, endpoint: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock that serialises starting, replacing and deleting `endpoint`'s supervisor.
    `wait=False`: the block gets False at once when another process holds it."""
    with file_lock(ws.lock_path(f"endpoint-{endpoint}"), wait=wait) as held:
        yield held


def spawn_supervisor(
    ws: Workspace, endpoint: str, *, replace: int | None = None, wait: bool = True
) -> int | None:
    """Start the supervisor of `endpoint` detached (own session: it outlives the CLI), unless
    one runs. The one way a supervisor starts: `endpoint create`, `chattune up` and
    `chattune up --watch` all come here, and the endpoint's lock makes the check and the
    start one step, so two of them racing start one supervisor.

    Args:
        replace: the pid of a supervisor found running but not answering: stop it (SIGTERM,
            then SIGKILL) and start a new one, unless the endpoint's supervisor is no longer
            that process (someone replaced it meanwhile).
        wait: wait for another holder of the lock; False returns None at once instead (a
            watcher: whoever holds the lock is dealing with this endpoint).

    Returns:
        The pid of the supervisor started; None when none was started: one runs, the endpoint
        is gone or being deleted, or (`wait=False`) the lock was taken.
    """
    with endpoint_lock(ws, endpoint, wait=wait) as held:
        if not held:
            return None
        try:
            ep = get_endpoint(ws, endpoint)
        except EndpointNotFound:
            return None
        if ep.state == "deleting":
            return None
        if pid_alive(ep.pid):
            if replace is None or ep.pid != replace:
                return None
            stop_endpoint(ws, endpoint, timeout_s=9.0)  # SIGKILL after 6 s: it hangs
        args = ["chattune.serving.control.supervisor", str(ws.root), endpoint]
        pid = spawn_detached(args, log_path(ws, endpoint))
        set_endpoint_fields(ws, endpoint, bump=False, pid=pid, state="creating", error=None)
        return pid


def _status(ws: Workspace, endpoint: str) -> dict:
    try:
        return json.loads(status_path(ws, endpoint).read_text())
    except (OSError, ValueError):
        return {}


def serving(ws: Workspace, ep: Endpoint) -> bool:
    """Whether the supervisor recorded in `ep` runs and has published its first config (its
    status file names its pid): from then on its gateway listens on `ep.port`."""
    return pid_alive(ep.pid) and _status(ws, ep.name).get("pid") == ep.pid


def gateway_answers(client: httpx.Client, ep: Endpoint) -> bool:
    """Whether the gateway of `ep` answers `GET /health` within `HEALTH_TIMEOUT_S`."""
    try:
        client.get(f"http://127.0.0.1:{ep.port}/health", timeout=HEALTH_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return True


def wait_running(ws: Workspace, endpoint: str, timeout_s: float = 120.0) -> Endpoint:
    """Wait until the supervisor of `endpoint` has applied its config and the gateway answers
    `/health`.

    Raises:
        EndpointError: the supervisor died (the message quotes its log) or took too long.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False) as client:
        while time.monotonic() < deadline:
            ep = get_endpoint(ws, endpoint)
            if not pid_alive(ep.pid):
                raise EndpointError(
                    f"the supervisor of endpoint {endpoint!r} exited: {ep.error or ''} "
                    f"log: {_log_tail(ws, endpoint)}",
                    fix=f"read {log_path(ws, endpoint)}, fix the cause, then `chattune up`.",
                )
            if serving(ws, ep) and gateway_answers(client, ep):
                return get_endpoint(ws, endpoint)
            time.sleep(POLL_S * 5)
    raise EndpointError(
        f"the gateway of {endpoint!r} did not answer within {timeout_s:.0f} s.",
        fix=f"read {log_path(ws, endpoint)}.",
    )


def apply(ws: Workspace, endpoint: str, stamp: float, timeout_s: float = 60.0) -> bool:
    """Make the change that wrote `stamp` live: SIGHUP the supervisor, wait for its ack.

    Returns:
        True when live; False when the endpoint's supervisor is not running (the change is
        in the database and applies at `chattune up`).

    Raises:
        EndpointError: the supervisor died or did not acknowledge in time.
    """
    ep = get_endpoint(ws, endpoint)
    if not pid_alive(ep.pid):
        return False
    if _status(ws, endpoint).get("pid") == ep.pid:
        # it has written its status, so its SIGHUP handler is in place (SIGHUP's default
        # action would end it); a supervisor still starting reads the latest rows anyway
        os.kill(ep.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _status(ws, endpoint)
        if status.get("pid") == ep.pid and status.get("applied", 0) >= stamp:
            return True
        if not pid_alive(ep.pid):
            raise EndpointError(
                f"the supervisor of {endpoint!r} exited before applying the change.",
                fix=f"read {log_path(ws, endpoint)}, then `chattune up`.",
            )
        time.sleep(POLL_S)
    raise EndpointError(
        f"the supervisor of {endpoint!r} did not apply the change within {timeout_s:.0f} s.",
        fix=f"read {log_path(ws, endpoint)}.",
    )


def wait_deployment(
    ws: Workspace,
    endpoint: str,
    name: str,
    timeout_s: float = 900.0,
    on_progress: Callable[[Deployment], None] | None = None,
) -> Deployment:
    """Wait until deployment `name` is ready.

    Raises:
        DeploymentFailed: it failed (the reason from its instance log) or timed out.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        dep = get_deployment(ws, endpoint, name)
        if on_progress:
            on_progress(dep)
        if dep.state == "ready":
            return dep
        if dep.state == "failed":
            raise DeploymentFailed(
                f"deployment {name!r} of {endpoint!r} failed: {dep.error}",
                fix=f"read its log (chattune deployment logs --endpoint {endpoint} --name "
                f"{name}), fix the model or settings, then `chattune deployment update` or "
                "delete and create it again.",
            )
        ep = get_endpoint(ws, endpoint)
        if not pid_alive(ep.pid):
            raise supervisor_not_running(endpoint, name)
        if time.monotonic() > deadline:
            raise DeploymentFailed(
                f"deployment {name!r} was not ready after {timeout_s:.0f} s (state {dep.state}).",
                fix="read its log with `chattune deployment logs`; raise the timeout.",
            )
        time.sleep(0.1)


def supervisor_not_running(endpoint: str, name: str) -> DeploymentFailed:
    """The error of waiting for deployment `name` of an endpoint that is stopped."""
    return DeploymentFailed(
        f"the supervisor of {endpoint!r} is not running, so {name!r} cannot start.",
        fix="run `chattune up`.",
    )


def stop_endpoint(ws: Workspace, name: str, timeout_s: float = 30.0) -> None:
    """Stop every process of endpoint `name` (supervisor, gateway, instances) and wait until
    they are gone and its ports are free.

    Raises:
        EndpointError: something still runs or listens after `timeout_s`.
    """
    ep = get_endpoint(ws, name)
    instances = list_instances(ws, name)
    pids = [p for p in [ep.pid, *(i.pid for i in instances)] if p]
    ports = [p for p in [ep.port, *(i.port for i in instances)] if p]
    if pid_alive(ep.pid):
        os.kill(ep.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive and all(port_free(p) for p in ports):
            return
        if time.monotonic() > deadline - timeout_s / 3:
            for pid in alive:  # the supervisor could not stop them: last resort
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_S * 5)
    raise EndpointError(
        f"processes {[p for p in pids if pid_alive(p)]} or ports {ports} of {name!r} are "
        "still in use.",
        fix="stop them by hand (kill PID), then run the command again.",
    )


def delete_endpoint(ws: Workspace, name: str) -> None:
    """Stop every process of `name`, wait for its ports, remove its rows and its folder.
    Under the endpoint's lock: no watcher restarts it halfway."""
    with endpoint_lock(ws, name):
        set_endpoint_fields(ws, name, bump=False, state="deleting")
        stop_endpoint(ws, name)
        delete_endpoint_rows(ws, name)
        shutil.rmtree(endpoint_dir(ws, name), ignore_errors=True)


def bring_up(ws: Workspace, timeout_s: float = 900.0) -> list[Endpoint]:
    """Restart the supervisor of every endpoint whose supervisor is not running (after a
    machine restart every pid is dead): same port, keys, deployments and traffic. Waits until
    each gateway answers and each deployment is ready or failed.

    Returns:
        the endpoints it started.
    """
    started = [ep.name for ep in list_endpoints(ws) if spawn_supervisor(ws, ep.name)]
    for name in started:
        wait_running(ws, name)
    for name in started:
        for dep in list_deployments(ws, name):
            # a failure is recorded in its row: `up` reports it and the others go on
            with contextlib.suppress(DeploymentFailed):
                wait_deployment(ws, name, dep.name, timeout_s)
    return [get_endpoint(ws, n) for n in started]
