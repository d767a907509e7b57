"""Load what a model server serves: resolve the checkpoint, load the weights (and adapters)
in the serving dtype, and start the engine."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from chattune.host.malloc import malloc_state
from chattune.kernels.prepack import packed_count
from chattune.models.checkpoint import resolve_checkpoint
from chattune.models.loading import DEFAULT_ADAPTER, load_model, load_tokenizer, serving_dtype
from chattune.serving.model_server.engine import Engine

log = logging.getLogger("chattune.serving")


def load_engine(
    model_dir: Path, adapters: dict[str, Path], max_batch_size: int, dtype_name: str = "auto"
) -> tuple[Engine, dict[str, Any]]:
    """Resolve, load and start the engine of `model_dir` (with `adapters`) in `dtype_name`
    (see `models.loading.serving_dtype`)."""
    t0 = time.perf_counter()
    ckpt = resolve_checkpoint(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = serving_dtype(device, dtype_name)
    log.info("loading %s (%s, base %s) on %s in %s", ckpt.model_dir, ckpt.kind, ckpt.base_id,
             device, str(dtype).removeprefix("torch."))  # fmt: skip
    model, names = load_model(ckpt, adapters, device=device, dtype=dtype)
    default = DEFAULT_ADAPTER if DEFAULT_ADAPTER in names else None
    engine = Engine(
        model,
        load_tokenizer(ckpt),
        adapters=names,
        default_adapter=default,
        max_batch_size=max_batch_size,
    )
    info = {
        "model_dir": str(ckpt.model_dir),
        "kind": ckpt.kind,
        "base_id": ckpt.base_id,
        "adapters": names,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "prepacked_linears": packed_count(model),
        "malloc": malloc_state() or "default",
        "context_length": engine.context_length,
        "load_seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("model loaded in %.1fs: %s", info["load_seconds"], info)
    return engine, info
