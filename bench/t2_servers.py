"""The three servers of the T2 serving benchmark, each started on a free port in its own
process group and always stopped (context managers whose `finally` kills the group).

  chattune            a real deployment: temporary workspace (CHATTUNE_HOME), the model
                      registered as a `custom_model`, an endpoint with key auth, a deployment
                      with 100% traffic, reached through the gateway's /v1/chat/completions
  transformers_serve  `transformers serve --continuous-batching <model_dir>` (local model
                      forced, CPU, `bench_dtype()`), /v1/chat/completions
  mlflow_serve        `mlflow models serve --env-manager local` of an MLflow transformers
                      model saved with task `llm/v1/chat`, /invocations

Every server runs the same dtype, `bench_dtype()`: what chattune's model server picks by
default (bf16 on a CPU with bf16 instructions, else fp32), given to the other two.

Each context manager yields a `Target`: where to send requests and how (`api` "openai" or
"mlflow", whether the server streams).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import BenchFailed, run_child

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
ENDPOINT = "t2-bench"
DEPLOYMENT = "bench"
MODEL_NAME = "SmolLM2-bench"


def bench_dtype() -> str:
    """The dtype every T2 server runs: chattune's own default on this machine (`--dtype auto`
    of its model server), so that the three serve the same arithmetic."""
    import torch

    from chattune.models.loading import serving_dtype

    return str(serving_dtype(torch.device("cpu"))).removeprefix("torch.")


@dataclass
class Target:
    """A started server: its URL for chat requests, headers, API flavour and process info."""

    name: str
    url: str
    api: str  # "openai" (/v1/chat/completions) or "mlflow" (/invocations, llm/v1/chat)
    stream: bool
    headers: dict[str, str] = field(default_factory=dict)
    model: str | None = None  # the "model" field of an OpenAI request (None: left out)
    startup_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the leader's children, even if it has exited
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(STOP_TIMEOUT_S)


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def server_process(cmd: list[str], log: Path, health: str, env: dict[str, str]) -> Iterator[tuple]:
    """Start `cmd` in its own process group, wait until GET `health` answers 200; always stop
    the group. Yields (process, seconds it took to answer)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise BenchFailed(
                        f"{cmd[0]} exited {proc.returncode} while starting; log {log}:\n"
                        + _log_tail(log)
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(health, timeout=2.0).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchFailed(
                        f"{health} did not answer in {START_TIMEOUT_S:.0f} s; log {log}"
                    )
                time.sleep(0.2)
        yield proc, time.perf_counter() - t0
    finally:
        _kill_group(proc)


# -- transformers serve -------------------------------------------------------------------------
@contextlib.contextmanager
def transformers_serve(
    model_dir: Path, work: Path, cb_memory_percent: float | None = None
) -> Iterator[Target]:
    """`transformers serve --continuous-batching` of the local model, CPU, `bench_dtype()`.

    `cb_memory_percent`: its `--cb-max-memory-percent` (None: its default, which on CPU sizes
    the paged KV cache from the free RAM: gigabytes of resident memory)."""
    port = free_port()
    cmd = [
        str(VENV_BIN / "transformers"),
        "serve",
        str(model_dir),
        "--continuous-batching",
        "--device",
        "cpu",
        "--dtype",
        bench_dtype(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    if cb_memory_percent is not None:
        cmd += ["--cb-max-memory-percent", str(cb_memory_percent)]
    url = f"http://127.0.0.1:{port}"
    with server_process(cmd, work / "transformers_serve.log", f"{url}/health", _env()) as (p, s):
        yield Target(
            "transformers_serve",
            f"{url}/v1/chat/completions",
            "openai",
            stream=True,
            model=str(model_dir),
            startup_s=s,
            pids=[p.pid],
            settings={"command": " ".join(cmd[1:]), "streaming": True},
        )


# -- mlflow models serve ------------------------------------------------------------------------
def _dir_key(model_dir: Path) -> str:
    """A key of the model folder's files (names, sizes, mtimes): the MLflow copy's cache key."""
    h = hashlib.sha256(str(model_dir).encode())
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def save_mlflow_model(model_dir: Path, dest: Path, dtype: str) -> None:
    """Save `model_dir` as an MLflow transformers model with task `llm/v1/chat`, weights in
    `dtype` (MLflow records it and loads the pipeline in it).

    Run in a child process (`t2_servers.py save-mlflow MODEL DEST`): mlflow and the model stay
    out of the harness's memory.
    """
    import mlflow.transformers
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stage = dest.with_name(dest.name + ".staging")
    shutil.rmtree(stage, ignore_errors=True)
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(stage),
        task="llm/v1/chat",
        # given, not inferred: inference would load the model again, and MLflow would ask
        # the hub for a model card
        pip_requirements=["transformers", "torch"],
        model_card=ModelCard("---\nlibrary_name: transformers\n---\n# T2 benchmark copy\n"),
    )
    stage.rename(dest)


def mlflow_model(model_dir: Path, cache: Path) -> tuple[Path, float]:
    """The MLflow copy of `model_dir` under `cache` (saved once, in a child process).

    Returns:
        its path and the seconds spent saving it (0 when it was cached).
    """
    dtype = bench_dtype()
    dest = cache / f"mlflow-{_dir_key(model_dir)}-{dtype}"
    if (dest / "MLmodel").is_file():
        return dest, 0.0
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = cache / f"{dest.name}.json"
    run_child([__file__, "save-mlflow", str(model_dir), str(dest), dtype, str(done)], done, 900)
    return dest, time.perf_counter() - t0


@contextlib.contextmanager
def mlflow_serve(model_path: Path, work: Path) -> Iterator[Target]:
    """`mlflow models serve --env-manager local` (1 worker, MLflow's default), /invocations."""
    port = free_port()
    timeout_s = 900  # MLflow's 60 s default would time out queued requests at concurrency 16
    cmd = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        str(model_path),
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--timeout",
        str(timeout_s),
    ]
    url = f"http://127.0.0.1:{port}"
    env = _env()
    env["MLFLOW_TRACKING_URI"] = (work / "mlruns").as_uri()  # nothing written to the user's
    with server_process(cmd, work / "mlflow_serve.log", f"{url}/ping", env) as (p, s):
        yield Target(
            "mlflow_serve",
            f"{url}/invocations",
            "mlflow",
            stream=False,
            startup_s=s,
            pids=[p.pid],
            settings={
                "command": " ".join(cmd[1:]),
                "workers": 1,
                "streaming": False,
                "ttft": "no streaming: time to first token = latency",
            },
        )


# -- chattune ---------------------------------------------------------------------------------
@dataclass
class ChattuneHome:
    """A temporary chattune workspace with the benchmark model registered once."""

    root: Path
    model_ref: str


def chattune_home(model_dir: Path, work: Path) -> ChattuneHome:
    """Create a workspace under `work` and register a copy of `model_dir` as `custom_model`.

    The copy (not `model_dir` itself) is registered: registration hard-links and makes the
    files read-only, which would change the modes of the user's own checkpoint.
    """
    from chattune.registry.service import register_model
    from chattune.workspace import Workspace

    root = work / "chattune_home"
    src = work / "model_copy"
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(model_dir, src)
    ws = Workspace.open(root)
    mv = register_model(ws, name=MODEL_NAME, path=str(src), type="custom_model", version="1")
    shutil.rmtree(src, ignore_errors=True)  # the version holds its own links to the files
    return ChattuneHome(root, f"{mv.name}:{mv.version}")


@contextlib.contextmanager
def chattune_deployment(home: ChattuneHome, work: Path, max_concurrency: int) -> Iterator[Target]:
    """An endpoint (key auth) with one deployment of the model at 100% traffic.

    `max_concurrent_requests_per_instance` is `max_concurrency`, so the gateway admits the
    benchmark's concurrency (it answers 429 above 2 x that x instances, as Azure does); the
    request timeout is Azure's maximum (180 s). The supervisor splits the cores between
    instances itself.
    """
    from chattune.serving import service
    from chattune.serving.deployments import DeploymentSettings, ProbeSettings, list_instances
    from chattune.serving.endpoints import get_endpoint, get_keys
    from chattune.workspace import Workspace
    from chattune.workspace.processes import pid_alive

    ws = Workspace.open(home.root)
    t0 = time.perf_counter()
    ep = service.create_endpoint(ws, ENDPOINT, description="T2 benchmark")
    pids: list[int] = []
    try:
        settings = DeploymentSettings(
            request_timeout_ms=180_000,
            max_concurrent_requests_per_instance=max_concurrency,
            readiness_probe=ProbeSettings(initial_delay=0.5, period=1.0),
            liveness_probe=ProbeSettings(initial_delay=30.0, period=10.0, timeout=5.0),
        )
        service.create_deployment(
            ws, ENDPOINT, DEPLOYMENT, home.model_ref, settings, timeout_s=START_TIMEOUT_S
        )
        service.update_traffic(ws, ENDPOINT, {DEPLOYMENT: 100})
        ep = get_endpoint(ws, ENDPOINT)
        pids = [p for p in [ep.pid, *(i.pid for i in list_instances(ws, ENDPOINT))] if p]
        yield Target(
            "chattune",
            f"http://127.0.0.1:{ep.port}/v1/chat/completions",
            "openai",
            stream=True,
            headers={"Authorization": f"Bearer {get_keys(ws, ENDPOINT).primary_key}"},
            startup_s=time.perf_counter() - t0,
            pids=pids,
            settings={
                **settings.model_dump(exclude={"liveness_probe", "readiness_probe"}),
                "instance_count": 1,
                "streaming": True,
                "auth": "key",
                "path": "gateway -> model server (/v1/chat/completions)",
            },
        )
    finally:
        try:
            service.delete_endpoint(ws, ENDPOINT)  # SIGTERM, then SIGKILL what does not stop
        except Exception:
            for pid in pids:  # last resort, only our own processes still alive
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            raise


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "save-mlflow":
    save_mlflow_model(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    Path(sys.argv[5]).write_text(json.dumps({"saved": sys.argv[3]}))
