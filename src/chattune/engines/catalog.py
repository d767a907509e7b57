"""The engines a deployment can run on (`chattune engine list`): chattune's own, always there,
and vLLM where its environment is installed and imports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chattune import __version__
from chattune.engines.vllm_env import INSTALL_COMMAND, EngineUnavailable, check_vllm, vllm_location
from chattune.host import machine

BUILTIN, VLLM = "builtin", "vllm"
ENGINE_CHOICES = ("auto", VLLM, BUILTIN)  # what `--engine` takes


@dataclass(frozen=True)
class EngineInfo:
    """One engine as `chattune engine list` shows it.

    Args:
        name: "builtin" or "vllm".
        installed: whether it can serve now.
        version: its version ("-" when not installed).
        devices: what it can run on ("cpu", "cuda:0", ...).
        location: where it lives (chattune's environment, or vLLM's folder).
        note: how to install it, or why it does not work.
    """

    name: str
    installed: bool
    version: str
    devices: list[str]
    location: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_engines(workspace_root: Path) -> list[EngineInfo]:
    """Each engine, installed or not (vLLM is checked by importing it: seconds)."""
    gpus = [f"cuda:{g.index}" for g in machine.local_machine().gpus]
    builtin = EngineInfo(BUILTIN, True, __version__, ["cpu", *gpus], "chattune's environment")
    root, source = vllm_location(workspace_root)
    where = f"{root} (${source})" if source != "workspace" else str(root)
    try:
        env = check_vllm(workspace_root)
    except EngineUnavailable as exc:
        vllm = EngineInfo(VLLM, False, "-", [], where, exc.message + f" Install: {INSTALL_COMMAND}")
    else:
        vllm = EngineInfo(VLLM, True, f"{env.version} ({env.package})", env.devices, where)
    return [builtin, vllm]
