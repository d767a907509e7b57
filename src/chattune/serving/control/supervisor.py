"""The supervisor of one endpoint: `python -m chattune.serving.control.supervisor WS ENDPOINT`.

One process per endpoint, detached from the CLI that started it. It serves the endpoint's
gateway (in a thread, on the endpoint's port) and makes the model-server processes follow
the workspace database: `instance_count` processes per deployment (LoRA-only deployments
of one base share one group), probed per their liveness/readiness settings, restarted when
liveness fails or the process exits, and marked failed (with the reason from the log) when
they crash at start again and again. Whenever anything changes it pushes a fresh
`GatewayConfig` holding only ready instances, and writes back the endpoint stamp it has
applied to `ws/endpoints/<name>/supervisor.json`: the CLI waits for that stamp.

Each instance answers only requests carrying this run's instance key, made at start and
never written down, which the gateway adds (`serving/keys.py`).

SIGHUP: re-read the database now. SIGTERM: stop every instance and exit.

The CLI side (start, signal and wait, stop) is `serving/control/lifecycle.py`.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from chattune.engines.catalog import VLLM
from chattune.errors import ChattuneError
from chattune.models.checkpoint import resolve_checkpoint
from chattune.models.store import get_model
from chattune.serving.control.engines import BuiltinModelServer, InstanceEngine
from chattune.serving.control.instances import GroupSpec, Slot, failure_reason
from chattune.serving.control.probes import Prober
from chattune.serving.control.vllm import VllmServer, vllm_server
from chattune.serving.deployments import (
    Deployment,
    Instance,
    ProbeSettings,
    list_deployments,
    replace_instances,
    set_deployment_state,
)
from chattune.serving.endpoints import Endpoint, endpoint_dir, get_endpoint, set_endpoint_fields
from chattune.serving.gateway.config import DeploymentTarget, GatewayConfig
from chattune.serving.keys import digest_of_stored, new_instance_key
from chattune.workspace import Workspace
from chattune.workspace.files import write_json_atomic

GATEWAY_FACTORY = "chattune.serving.gateway.app:create_gateway"  # `CHATTUNE_GATEWAY` overrides
TICK_S = 0.05  # the loop's period: process exits and probe results are seen this fast
POLL_DB_S = 1.0  # re-read the database this often even without SIGHUP
MAX_START_CRASHES = 3  # exits before ever being ready, in a row: the deployment failed
STATUS_FILE = "supervisor.json"


def status_path(ws: Workspace, endpoint: str) -> Path:
    return endpoint_dir(ws, endpoint) / STATUS_FILE


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


@dataclass
class Group:
    """The processes serving one deployment, or every LoRA-only deployment of one base."""

    name: str
    members: list[Deployment]
    spec: GroupSpec
    count: int
    liveness: ProbeSettings
    readiness: ProbeSettings
    engine: InstanceEngine
    failed: str | None = None  # why, once it crash-looped at start
    ready_once: bool = False  # every instance was ready once: a later restart keeps "ready"


def plan_groups(
    ws: Workspace, deployments: list[Deployment], builtin: InstanceEngine | None = None
) -> dict[str, Group]:
    """Which process groups the deployments need, and what each runs: the built-in engine
    (`builtin`, default `BuiltinModelServer.from_env()`), or vLLM for the deployments that
    chose it. A deployment whose model or vLLM is gone fails alone, with the reason."""
    builtin = builtin or BuiltinModelServer.from_env()
    groups: dict[str, Group] = {}
    for dep in deployments:
        s = dep.settings
        try:
            mv = get_model(ws, dep.model_name, version=dep.model_version)
            ckpt = _resolve(str(mv.path)) if s.lora_only else None
            engine = _vllm(ws, str(mv.path)) if s.engine_chosen == VLLM else builtin
        except ChattuneError as exc:  # its model or engine is gone or unusable: it alone fails
            spec = GroupSpec("", served_name=dep.name, generation=(dep.generation,))
            groups[dep.name] = Group(
                dep.name, [dep], spec, 0, s.liveness_probe, s.readiness_probe, builtin,
                failed=str(exc),
            )  # fmt: skip
            continue
        if ckpt is None:
            model_dir = _resolve(str(mv.path)).model_dir if engine is not builtin else mv.path
            spec = GroupSpec(
                str(model_dir), served_name=dep.name, generation=(dep.generation,),
                engine=engine.name,
            )  # fmt: skip
            groups[dep.name] = Group(
                dep.name, [dep], spec, dep.instance_count, s.liveness_probe, s.readiness_probe,
                engine,
            )  # fmt: skip
            continue
        group = groups.get(dep.group)
        if group is None:
            group = groups[dep.group] = Group(
                dep.group,
                [],
                GroupSpec(str(ckpt.model_dir), served_name=dep.group),
                0,
                s.liveness_probe,
                s.readiness_probe,
                builtin,
            )
        group.members.append(dep)
        group.count = max(group.count, dep.instance_count)
        group.spec = GroupSpec(
            group.spec.model_dir,
            (*group.spec.adapters, (dep.name, str(ckpt.adapter_dir))),
            dep.group,
            (*group.spec.generation, dep.generation),
        )
    return groups


_resolved: dict[str, Any] = {}
_vllm_servers: dict[str, VllmServer] = {}


def _vllm(ws: Workspace, path: str) -> VllmServer:
    """The vLLM server of the model at `path`, once per path.

    Raises:
        EngineUnavailable: vLLM is gone or broken since the deployment was created.
    """
    if path not in _vllm_servers:
        _vllm_servers[path] = vllm_server(ws.root, _resolve(path))
    return _vllm_servers[path]


def _resolve(path: str) -> Any:
    """`loader.resolve_checkpoint`, once per path (it hashes the base weights)."""
    if path not in _resolved:
        _resolved[path] = resolve_checkpoint(Path(path))
    return _resolved[path]


class Supervisor:
    """Reconciles one endpoint's processes with the database; see the module docstring."""

    def __init__(self, ws: Workspace, endpoint: str, engine: InstanceEngine | None = None) -> None:
        self.ws, self.name = ws, endpoint
        self.engine: InstanceEngine = engine or BuiltinModelServer.from_env()
        # what the gateway sends to this run's instances and they demand (`serving/keys.py`)
        self.instance_key = new_instance_key()
        self.dir = endpoint_dir(ws, endpoint)
        self.slots: dict[tuple[str, int], Slot] = {}
        self.groups: dict[str, Group] = {}
        self.endpoint: Endpoint | None = None
        self.applied = 0.0  # the endpoint stamp the running config reflects
        self.wake = threading.Event()
        self.stopping = False
        self.prober = Prober()
        self.gateway: Any = None
        self.server: Any = None
        self._last_rows: Any = None
        self._last_config: GatewayConfig | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM or until the endpoint's row is gone. Returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, lambda *_: self.wake.set())
        ep = get_endpoint(self.ws, self.name)
        set_endpoint_fields(
            self.ws, self.name, bump=False, pid=os.getpid(), state="creating", error=None
        )
        self.endpoint = ep
        try:
            self._start_gateway(ep)
        except ChattuneError as exc:
            set_endpoint_fields(
                self.ws, self.name, bump=False, pid=None, state="failed", error=str(exc)
            )
            _say(f"error: {exc}")
            return 1
        _say(f"gateway of {self.name} on http://127.0.0.1:{ep.port}")
        last_db = 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                if self.wake.is_set() or now - last_db >= POLL_DB_S:
                    self.wake.clear()
                    last_db = now
                    if not self._reconcile():
                        break
                self._watch()
                self.wake.wait(TICK_S)
        except Exception:
            traceback.print_exc()
            set_endpoint_fields(
                self.ws,
                self.name,
                bump=False,
                state="failed",
                error="the supervisor crashed: see its log",
            )
            return 1
        finally:
            self._shutdown()
        return 0

    def _on_term(self, *_: Any) -> None:
        self.stopping = True
        self.wake.set()

    def _start_gateway(self, ep: Endpoint) -> None:
        module, _, func = os.environ.get("CHATTUNE_GATEWAY", GATEWAY_FACTORY).partition(":")
        self.gateway = getattr(importlib.import_module(module), func)(self._config(ep, {}))
        config = uvicorn.Config(
            self.gateway.app, host="127.0.0.1", port=ep.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        thread.start()
        while not self.server.started:
            if not thread.is_alive():
                raise ChattuneError(
                    f"the gateway could not listen on port {ep.port} (in use?).",
                    fix=f"free port {ep.port} (e.g. stop what listens there), then run "
                    "`chattune up`.",
                )
            time.sleep(0.02)

    def _shutdown(self) -> None:
        _say("stopping instances")
        for slot in self.slots.values():
            slot.terminate()
        for slot in self.slots.values():
            slot.stop()
        self.prober.close()
        if self.server is not None:
            self.server.should_exit = True
        try:
            set_endpoint_fields(self.ws, self.name, bump=False, pid=None, state="stopped")
            replace_instances(self.ws, self.name, [])
        except ChattuneError:
            pass  # the endpoint was deleted: nothing to record
        _say("supervisor stopped")

    # -- reconcile ---------------------------------------------------------------------------
    def _reconcile(self) -> bool:
        """Read the database; start/stop processes to match. False: the endpoint is gone."""
        try:
            ep = get_endpoint(self.ws, self.name)
        except ChattuneError:
            return False
        if ep.state == "deleting":
            return False
        deployments = list_deployments(self.ws, self.name)
        stamp_changed = ep.updated_at != self.applied
        if not stamp_changed and self.groups:
            return True
        old = self.groups
        self.groups = {}
        for name, group in plan_groups(self.ws, deployments, self.engine).items():
            prior = old.get(name)
            if prior is not None and prior.spec == group.spec:
                group.failed = prior.failed  # a crash loop ends with an update only
                group.ready_once = prior.ready_once and prior.count == group.count
            self.groups[name] = group
        for key, slot in list(self.slots.items()):
            group = self.groups.get(key[0])
            if group is None or key[1] >= group.count or slot.spec != group.spec:
                _say(f"stopping {key[0]} instance {key[1]}")
                slot.stop()
                if group is None or key[1] >= group.count:
                    del self.slots[key]
                else:
                    slot.restarts, slot.start_crashes = 0, 0
        for group in self.groups.values():
            for idx in range(group.count):
                slot = self.slots.get((group.name, idx))
                if slot is None:
                    log = self.dir / group.name / f"instance-{idx}.log"
                    slot = self.slots[(group.name, idx)] = Slot(group.name, idx, log)
                if slot.proc is None and group.failed is None:
                    _say(f"starting {group.name} instance {idx}")
                    self._start(group, slot)
        self.endpoint = ep
        self._publish(ep.updated_at)
        return True

    def _watch(self) -> None:
        """Check exits and probes of every slot; restart what died; publish on change."""
        changed = False
        for (gname, _), slot in self.slots.items():
            group = self.groups.get(gname)
            if group is None or slot.proc is None:
                continue
            code = slot.proc.poll()
            if code is not None:
                changed = True
                self._on_exit(group, slot, code)
                continue
            if self.prober.tick(slot, group.liveness, group.readiness):
                changed = True
                if slot.live_fail >= group.liveness.failure_threshold:
                    self._on_liveness_failure(group, slot)
        if changed:
            self._publish(self.applied)

    def _start(self, group: Group, slot: Slot) -> None:
        # the CPU's cores, split between every instance of the endpoint
        instances = sum(g.count for g in self.groups.values()) or 1
        threads = max(1, (os.cpu_count() or 1) // instances)
        slot.start(
            group.engine, group.spec, group.liveness, group.readiness, self.instance_key, threads
        )

    def _on_liveness_failure(self, group: Group, slot: Slot) -> None:
        """Liveness failed `failure_threshold` times in a row: kill and restart (Azure)."""
        n = group.liveness.failure_threshold
        _say(f"{group.name} instance {slot.idx}: liveness failed {n} times; restarting")
        slot.kill()
        if not slot.ever_ready:
            # never got ready: the probes may start too early for this model to load
            self._restart_or_fail(
                group,
                slot,
                f"liveness probe failed {n} times",
                f"its liveness probe failed {n} times each time (does the model load in "
                f"time? raise --liveness-initial-delay, now {group.liveness.initial_delay} s)",
            )
            return
        slot.restarts += 1
        self._start(group, slot)
        slot.error = f"liveness probe failed {n} times"

    def _on_exit(self, group: Group, slot: Slot, code: int) -> None:
        reason = failure_reason(slot.log)
        slot.reap()
        slot.proc, slot.ready = None, False
        _say(f"{group.name} instance {slot.idx} exited with code {code}: {reason}")
        if slot.ever_ready:
            slot.restarts += 1
            self._start(group, slot)
            slot.error = f"exited with code {code}: {reason}"
            return
        self._restart_or_fail(
            group, slot, f"exited with code {code}: {reason}", f"last error: {reason}"
        )

    def _restart_or_fail(self, group: Group, slot: Slot, error: str, why: str) -> None:
        """An instance died before it was ever ready: restart it, unless that happened
        `MAX_START_CRASHES` times in a row; then the deployment failed (no endless loop)."""
        slot.start_crashes += 1
        if slot.start_crashes >= MAX_START_CRASHES:
            group.failed = (
                f"instance {slot.idx} died {slot.start_crashes} times before getting ready; {why}"
            )
            slot.error = error
            _say(f"{group.name} failed: {group.failed}")
            return
        slot.restarts += 1
        self._start(group, slot)
        slot.error = error

    # -- publish -------------------------------------------------------------------------------
    def _deployment_state(self, group: Group) -> tuple[str, str | None]:
        if group.failed:
            return "failed", group.failed
        slots = [self.slots.get((group.name, i)) for i in range(group.count)]
        group.ready_once |= all(s is not None and s.ever_ready for s in slots)
        if group.ready_once:
            return "ready", None
        return "creating", None

    def _config(self, ep: Endpoint, states: dict[str, tuple[str, str | None]]) -> GatewayConfig:
        targets = {}
        for group in self.groups.values():
            urls = tuple(
                s.url
                for (g, _), s in sorted(self.slots.items())
                if g == group.name and s.ready and s.proc is not None
            )
            for dep in group.members:
                state, error = states.get(dep.name, ("creating", None))
                targets[dep.name] = DeploymentTarget(
                    name=dep.name,
                    instances=urls,
                    instance_count=group.count,
                    request_timeout_ms=dep.settings.request_timeout_ms,
                    max_concurrent_requests_per_instance=(
                        dep.settings.max_concurrent_requests_per_instance
                    ),
                    adapter=dep.name if dep.settings.lora_only else None,
                    state=state,
                    error=error,
                    score_as_chat=group.engine.name == VLLM,
                    instance_key=self.instance_key,
                )
        return GatewayConfig(
            endpoint=ep.name,
            key_digests=tuple(digest_of_stored(d) for d in ep.key_digests().values()),
            traffic=dict(ep.traffic),
            mirror_traffic=dict(ep.mirror_traffic),
            deployments=targets,
        )

    def _publish(self, stamp: float) -> None:
        """Push the gateway config, write the rows that changed, then acknowledge `stamp`."""
        ep = self.endpoint
        assert ep is not None
        states = {}
        for group in self.groups.values():
            state = self._deployment_state(group)
            for dep in group.members:
                states[dep.name] = state
        config = self._config(ep, states)
        if config != self._last_config:
            self.gateway.update(config)
            self._last_config = config
        rows = [
            (
                dep.name,
                slot.idx,
                slot.proc.pid if slot.proc else None,
                slot.port,
                slot.state,
                slot.restarts,
                slot.error,
            )
            for group in self.groups.values()
            for dep in group.members
            for (g, _), slot in sorted(self.slots.items())
            if g == group.name
        ]
        snapshot = (rows, states)
        if snapshot != self._last_rows:
            now = time.time()
            replace_instances(
                self.ws, self.name, [Instance(self.name, *r, updated_at=now) for r in rows]
            )
            for dep_name, (state, error) in states.items():
                set_deployment_state(self.ws, self.name, dep_name, state, error)
            self._last_rows = snapshot
        if ep.state != "running":
            set_endpoint_fields(self.ws, self.name, bump=False, state="running", error=None)
            ep.state = "running"
        if stamp != self.applied:
            self.applied = stamp
            _write_status(status_path(self.ws, self.name), os.getpid(), ep.port, stamp)


def _write_status(path: Path, pid: int, port: int | None, applied: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"pid": pid, "port": port, "applied": applied}, indent=None)


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m chattune.serving.control.supervisor WS ENDPOINT`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(
            "usage: python -m chattune.serving.control.supervisor WORKSPACE ENDPOINT",
            file=sys.stderr,
        )
        return 2
    ws = Workspace.open(args[0])
    return Supervisor(ws, args[1]).run()


if __name__ == "__main__":
    sys.exit(main())
