"""Model-server processes of a deployment: start, stop, and read why one died.

A `Slot` is one place in a group of instances (`instance-<i>`); the process in it may be
replaced many times (restarts), each started through an `engines.InstanceEngine`. Probing
them is `probes.py`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from chattune.serving.control.engines import InstanceEngine, Launch
from chattune.serving.deployments import ProbeSettings

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this
_START_MARK = "---- chattune supervisor: starting instance"
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*|error: .*)$")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (binding it would succeed)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def failure_reason(log: Path) -> str:
    """Why the last run in `log` died: its last error line (a traceback's last line, or a
    chattune `error:` line), else its last non-empty line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"no log at {log}"
    run = text.rsplit(_START_MARK, 1)[-1]
    lines = [ln.strip() for ln in run.splitlines()[1:] if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    if errors:
        return errors[-1]
    return lines[-1] if lines else "the process exited without writing to its log"


@dataclass(frozen=True)
class GroupSpec:
    """What a group of instances runs; a change of spec replaces its processes."""

    model_dir: str
    adapters: tuple[tuple[str, str], ...] = ()  # (name, path) for LoRA-only groups
    served_name: str = ""
    generation: tuple[int, ...] = ()  # the members' generations: an update replaces
    engine: str = "chattune"  # the engine's name: a change of engine replaces


@dataclass
class Slot:
    """Instance `idx` of group `group`, across its restarts."""

    group: str
    idx: int
    log: Path
    spec: GroupSpec | None = None
    engine: InstanceEngine | None = None
    proc: subprocess.Popen | None = None
    port: int | None = None
    started: float = 0.0  # monotonic
    restarts: int = 0
    start_crashes: int = 0  # consecutive exits before ever getting ready
    ready: bool = False
    ever_ready: bool = False
    live_fail: int = 0
    ready_ok: int = 0
    ready_fail: int = 0
    error: str | None = None
    next_live: float = 0.0
    next_ready: float = 0.0
    live_probe: Future | None = field(default=None, repr=False)
    ready_probe: Future | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> str:
        """starting | ready | unhealthy | failed (the `instances.state` column)."""
        if self.proc is None:
            return "failed"
        if self.ready:
            return "ready"
        return "unhealthy" if self.ever_ready else "starting"

    def start(
        self,
        engine: InstanceEngine,
        spec: GroupSpec,
        liveness: ProbeSettings,
        readiness: ProbeSettings,
        instance_key: str,
        torch_threads: int | None = None,
    ) -> None:
        """Start an instance of `engine` for `spec` on a fresh port, logging to `self.log`.

        `instance_key`: what the instance demands of every request but its probes (the
        engine passes it in the environment, never on the command line).

        `torch_threads`: CPU threads per op; instances sharing the CPU split its cores (more
        threads than cores made a decoding step many times slower)."""
        self.engine, self.spec, self.port = engine, spec, free_port()
        launch = Launch(
            spec.model_dir,
            spec.adapters,
            spec.served_name,
            self.port,
            os.getpid(),
            torch_threads,
            instance_key,
        )
        cmd = engine.command(launch)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(
                f"{_START_MARK} {self.idx} on port {self.port} (restarts {self.restarts}) "
                f"{time.strftime('%H:%M:%S')}\n".encode()
            )
            out.flush()
            # its own process group, which its children join (vLLM's engine core and workers):
            # stopping, killing or reaping the instance signals the group, so none of them
            # outlives it (they did, holding the model and the KV cache, when only the
            # server's pid was signalled)
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **engine.env(launch)},
                process_group=0,
            )
        now = time.monotonic()
        self.started = now
        self.next_live = now + liveness.initial_delay
        self.next_ready = now + readiness.initial_delay
        self.ready = self.ever_ready = False
        self.live_fail = self.ready_ok = self.ready_fail = 0
        self.live_probe = self.ready_probe = None
        self.error = None

    def terminate(self) -> None:
        """Ask the instance and its children to stop (SIGTERM to its group); no waiting."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the instance and its children (SIGTERM to its process group, SIGKILL after
        `grace_s`) and wait for it."""
        proc, self.proc, self.ready = self.proc, None, False
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # children that outlived it

    def kill(self) -> None:
        """SIGKILL the instance and its children at once (a failed liveness probe: it may be
        hung)."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc, self.ready = None, False

    def reap(self) -> None:
        """After the instance exited on its own: SIGKILL the children it left behind."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid` (an instance's); nothing left in it is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
