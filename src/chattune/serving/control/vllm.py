"""vLLM as an engine of deployments: which engine a deployment gets (`choose_engine`), and
`VllmServer`, the `InstanceEngine` that runs vLLM's OpenAI server in its own environment.

An instance is `<vllm env>/bin/python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 and
a free port (started through `WITH_PARENT`, so it ends with the supervisor), serving the model
under the deployment's name, with:

- the chat template stored with the model (`chat_template.jinja` beside the tokenizer, else
  the tokenizer's own, which vLLM reads from the same file chattune does): training and
  serving render the same prompt;
- `--dtype` by the built-in engine's rule (`models.loading.serving_dtype`, honouring
  `$CHATTUNE_SERVING_DTYPE`);
- `--max-model-len` the model's context (`max_position_embeddings`), and on the CPU a KV cache
  (`VLLM_CPU_KVCACHE_SPACE`, GiB) for `KV_SEQUENCES` sequences of that length;
- `--enforce-eager` on the CPU: torch.compile's warm-up compiles C++ for minutes there;
- `--tensor-parallel-size` the GPUs vLLM sees, where there are several (instances are not
  given GPUs of their own yet: one instance per deployment spans them all);
- `--generation-config vllm`: vLLM's sampling defaults, as the built-in engine's, not the
  model's `generation_config.json`;
- the instance key as `VLLM_API_KEY` (its `--api-key`; in the environment, not on the command
  line). vLLM checks it on `/v1/...` only, so `/health`, `/tokenize` and `/metrics` stay open
  on loopback; the gateway forwards only `/score` (translated to `/v1/chat/completions`) and
  `/v1/chat/completions`.

Its log (stdout and stderr) goes to the instance log, like the built-in server's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from chattune.engines.catalog import BUILTIN, VLLM
from chattune.engines.vllm_env import EngineUnavailable, VllmEnv, check_vllm
from chattune.models.checkpoint import Checkpoint, resolve_checkpoint
from chattune.models.loading import DTYPE_ENV, serving_dtype
from chattune.serving.control.engines import Launch

GIB = 2**30
# vLLM has no `--parent-pid`: it is started through this, which asks Linux to SIGTERM it when
# the supervisor dies (PR_SET_PDEATHSIG = 1, kept across exec; vLLM then stops its engine
# core), checks the supervisor did not die first, and execs `python -m <module> <args>`.
# Args: the supervisor's pid, the module, its arguments.
WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit('error: the supervisor is gone'); "
    "os.execv(sys.executable, [sys.executable, '-m', *sys.argv[2:]])"
)
KV_SEQUENCES = 8  # full-length sequences the CPU KV cache holds at once
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class EngineChoice:
    """Which engine a deployment runs on, and why (what `deployment show` prints)."""

    engine: str  # "builtin" | "vllm"
    reason: str


@dataclass(frozen=True)
class ModelShape:
    """What vLLM's support and sizing depend on, read from a model's `config.json`."""

    head_dim: int
    layers: int
    kv_heads: int
    context: int

    @classmethod
    def of(cls, model_dir: Path) -> ModelShape:
        cfg = json.loads((model_dir / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        heads = cfg["num_attention_heads"]
        return cls(
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            layers=cfg["num_hidden_layers"],
            kv_heads=cfg.get("num_key_value_heads") or heads,
            context=cfg.get("max_position_embeddings") or 2048,
        )


def unsupported(env: VllmEnv, shape: ModelShape) -> str | None:
    """Why `env` cannot serve a model of `shape` (None: it can)."""
    if env.cuda_devices == 0 and env.cpu_head_sizes and shape.head_dim not in env.cpu_head_sizes:
        sizes = ", ".join(map(str, env.cpu_head_sizes))
        return f"vLLM's CPU attention takes head sizes {sizes}; this model's is {shape.head_dim}"
    return None


@dataclass(frozen=True)
class VllmServer:
    """vLLM's OpenAI server as an `InstanceEngine` (see the module docstring).

    Args:
        python: the vLLM environment's python.
        tokenizer_dir: the tokenizer (and chat template) stored with the model.
        dtype: "float32" | "bfloat16" | "float16".
        max_model_len: the context, in tokens.
        cuda: run on the GPU (the CUDA build where a GPU is seen), else the CPU.
        kv_cache_gib: the CPU KV cache (`VLLM_CPU_KVCACHE_SPACE`), whole GiB.
        gpus: GPUs one instance spans (tensor parallel), on the CUDA build.
    """

    python: str
    tokenizer_dir: str
    dtype: str
    max_model_len: int
    cuda: bool = False
    kv_cache_gib: int = 1
    gpus: int = 0
    name: str = VLLM
    liveness_path: str = "/health"  # 503 once its engine core died
    readiness_path: str = "/health"  # it listens only once the model is loaded
    forwarded_paths: tuple[str, ...] = ("/score", "/v1/chat/completions")

    @classmethod
    def for_model(
        cls, env: VllmEnv, model_dir: Path, tokenizer_dir: Path, dtype: str
    ) -> VllmServer:
        """The server of one model in `env`, sized by its `config.json`."""
        shape = ModelShape.of(model_dir)
        per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * DTYPE_BYTES[dtype]
        kv = math.ceil(per_token * shape.context * KV_SEQUENCES / GIB)
        return cls(
            python=str(env.python),
            tokenizer_dir=str(tokenizer_dir),
            dtype=dtype,
            max_model_len=shape.context,
            cuda=env.cuda_devices > 0,
            kv_cache_gib=max(1, kv),
            gpus=env.cuda_devices,
        )

    def command(self, launch: Launch) -> list[str]:
        template = Path(self.tokenizer_dir) / "chat_template.jinja"
        return [
            self.python, "-c", WITH_PARENT, str(launch.parent_pid), VLLM_MODULE,
            "--model", launch.model_dir,
            "--tokenizer", self.tokenizer_dir,
            *(["--chat-template", str(template)] if template.exists() else []),
            "--host", "127.0.0.1",
            "--port", str(launch.port),
            "--served-model-name", launch.served_name,
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--generation-config", "vllm",
            "--disable-access-log-for-endpoints", self.liveness_path,  # probes: log noise
            *([] if self.cuda else ["--enforce-eager"]),
            *(["--tensor-parallel-size", str(self.gpus)] if self.gpus > 1 else []),
        ]  # fmt: skip

    def env(self, launch: Launch) -> dict[str, str]:
        env = {
            "PYTHONUNBUFFERED": "1",
            "VLLM_API_KEY": launch.instance_key,
            "VLLM_NO_USAGE_STATS": "1",  # never a call home
            "VLLM_DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",  # the model is a local folder
        }
        if not self.cuda:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gib)
        return env


def vllm_server(workspace_root: Path, ckpt: Checkpoint) -> VllmServer:
    """The vLLM server of a resolved full model, in the workspace's (or `$CHATTUNE_VLLM`'s)
    vLLM environment.

    Raises:
        EngineUnavailable: vLLM is missing or broken (the fix names the install command).
    """
    import torch  # heavy: only the supervisor of a vLLM deployment needs the dtype rule here

    env = check_vllm(workspace_root)
    device = torch.device("cuda" if env.cuda_devices else "cpu")
    dtype = serving_dtype(device, os.environ.get(DTYPE_ENV, "auto"))
    name = str(dtype).removeprefix("torch.")
    return VllmServer.for_model(env, ckpt.model_dir, ckpt.tokenizer_dir, name)


def choose_engine(
    requested: str, *, lora_only: bool, model_path: Path, workspace_root: Path
) -> EngineChoice:
    """The engine of a deployment: `requested` ("auto" | "vllm" | "builtin") given what it
    serves (`model_path`, a registered version's folder) and the vLLM environment (checked
    only when it could be used).

    "auto" takes vLLM where it is installed and supports the model, else the built-in engine.

    Raises:
        EngineUnavailable: "vllm" was asked for and vLLM is missing, broken, or cannot serve
            this model (LoRA-only deployments, an unsupported head size); the fix names
            `chattune engine install vllm` or `--engine builtin`.
    """
    if requested == BUILTIN:
        return EngineChoice(BUILTIN, "asked for (--engine builtin)")
    why_not: str | None
    env: VllmEnv | None = None
    if lora_only:
        why_not = "LoRA-only deployments run on the built-in engine (adapters on vLLM: not yet)"
    else:
        try:
            env = check_vllm(workspace_root)
        except EngineUnavailable as exc:
            if requested == VLLM:
                raise  # its fix names `chattune engine install vllm`
            why_not = exc.message
        else:
            why_not = unsupported(env, ModelShape.of(resolve_checkpoint(model_path).model_dir))
    if env is not None and why_not is None:
        how = "asked for" if requested == VLLM else "auto: installed and supports the model"
        return EngineChoice(VLLM, f"{how} (vLLM {env.version}, {', '.join(env.devices)})")
    if requested == VLLM:
        raise EngineUnavailable(
            f"--engine vllm cannot serve this deployment: {why_not}.",
            fix="deploy it with --engine builtin (or auto).",
        )
    return EngineChoice(BUILTIN, f"auto: vLLM not used ({why_not})")
