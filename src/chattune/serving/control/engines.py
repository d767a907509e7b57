"""The boundary between the control side and a model server: how an engine's instance is
launched, probed, and which paths the gateway forwards to it.

The supervisor and `instances` use only `InstanceEngine`; the built-in model server
(`serving/model_server/`) is its first implementation; vLLM's OpenAI server is the second
(`control/vllm.py`): its command line, its environment, its health and readiness paths, and
the paths it answers. Each deployment runs on the engine chosen when it was created.

Every instance demands `Launch.instance_key` as `Authorization: Bearer <key>` on every route
but its probes (the gateway adds it; `serving/keys.py`). An engine passes the key in the
instance's environment, never on its command line (`ps` shows that to every user): the
built-in server reads `INSTANCE_KEY_ENV`; vLLM's OpenAI server would read `VLLM_API_KEY`,
its `--api-key`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Protocol

from chattune.serving.keys import INSTANCE_KEY_ENV

# The module run for each built-in instance; `CHATTUNE_MODEL_SERVER` swaps in another module
# that speaks the same command line and routes (tests use a fake one).
MODEL_SERVER_MODULE = "chattune.serving.model_server"
MODEL_SERVER_ENV = "CHATTUNE_MODEL_SERVER"


@dataclass(frozen=True)
class Launch:
    """What one instance is asked to serve, wherever the engine comes from.

    Args:
        model_dir: the checkpoint folder (a full model, or the base of LoRA adapters).
        adapters: (name, path) of LoRA adapters to load on the base.
        served_name: the model name in OpenAI answers.
        port: the port to listen on (127.0.0.1 only).
        parent_pid: the supervisor's pid: the instance exits when it is gone.
        torch_threads: CPU threads per op (instances sharing a CPU split its cores), or None.
        instance_key: the key the instance demands (`Authorization: Bearer`) of every
            request but its probes; the gateway sends it.
    """

    model_dir: str
    adapters: tuple[tuple[str, str], ...]
    served_name: str
    port: int
    parent_pid: int
    torch_threads: int | None = None
    instance_key: str = field(default="", repr=False)


class InstanceEngine(Protocol):
    """An engine whose instances the supervisor runs behind the gateway."""

    @property
    def name(self) -> str:
        """A short name for logs ("chattune", "vllm")."""
        ...

    @property
    def liveness_path(self) -> str:
        """GET path answering 2xx while the process is alive."""
        ...

    @property
    def readiness_path(self) -> str:
        """GET path answering 2xx once the model is loaded and requests may come."""
        ...

    @property
    def forwarded_paths(self) -> tuple[str, ...]:
        """The request paths the gateway forwards to an instance."""
        ...

    def command(self, launch: Launch) -> list[str]:
        """The command line that starts one instance."""
        ...

    def env(self, launch: Launch) -> dict[str, str]:
        """Environment variables added to the supervisor's for an instance; they carry
        `launch.instance_key`."""
        ...


@dataclass(frozen=True)
class BuiltinModelServer:
    """chattune's own model server (`python -m chattune.serving.model_server`).

    Args:
        module: the module run (`MODEL_SERVER_MODULE`, or `$CHATTUNE_MODEL_SERVER`).
    """

    module: str = MODEL_SERVER_MODULE
    name: str = "chattune"
    liveness_path: str = "/health"
    readiness_path: str = "/ready"
    forwarded_paths: tuple[str, ...] = ("/score", "/v1/chat/completions")

    @classmethod
    def from_env(cls) -> BuiltinModelServer:
        return cls(module=os.environ.get(MODEL_SERVER_ENV, MODEL_SERVER_MODULE))

    def command(self, launch: Launch) -> list[str]:
        adapters = [a for name, path in launch.adapters for a in ("--adapter", f"{name}={path}")]
        threads = ["--torch-threads", str(launch.torch_threads)] if launch.torch_threads else []
        return [
            sys.executable, "-m", self.module,
            "--model-dir", launch.model_dir,
            *adapters,
            "--host", "127.0.0.1",
            "--port", str(launch.port),
            "--served-name", launch.served_name,
            "--parent-pid", str(launch.parent_pid),
            *threads,
        ]  # fmt: skip

    def env(self, launch: Launch) -> dict[str, str]:
        return {
            "PYTHONUNBUFFERED": "1",  # its log lines reach the instance log at once
            INSTANCE_KEY_ENV: launch.instance_key,
        }
