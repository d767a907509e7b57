"""The model server's app: one instance of a deployment, the engine of one model behind
`/score` and the OpenAI API (routes in `router.py`, work in `service.py`).

It listens at once and loads the model on a thread: `GET /health` is 200 while the process
and the engine thread live (503 once the engine thread died), `GET /ready` is 503 until the
model is loaded, then 200. Every other route needs its key (`auth.py`). The command line is
`cli.py`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI

from chattune.serving.http_errors import install_error_handlers
from chattune.serving.model_server.auth import InstanceKeyCheck
from chattune.serving.model_server.engine import DEFAULT_MAX_BATCH, Engine
from chattune.serving.model_server.loading import load_engine
from chattune.serving.model_server.router import ROUTERS
from chattune.serving.model_server.service import ModelService

log = logging.getLogger("chattune.serving")


@dataclass(frozen=True)
class LoadSpec:
    """What to load at startup (see `create_app`)."""

    model_dir: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    max_batch_size: int = DEFAULT_MAX_BATCH
    dtype: str = "auto"
    exit_on_failure: bool = False

    def load_into(self, service: ModelService) -> None:
        """Load the engine and attach it; on failure record why (and maybe end the process)."""
        try:
            engine, service.info = load_engine(
                self.model_dir, self.adapters, self.max_batch_size, self.dtype
            )
            service.attach(engine)
        except Exception as exc:
            service.error = str(exc)
            log.exception("the model failed to load")
            if self.exit_on_failure:
                log.error("model server exiting: the model failed to load: %s", exc)
                logging.shutdown()
                os._exit(3)


def create_app(
    model_dir: Path | None = None,
    *,
    adapters: dict[str, Path] | None = None,
    served_name: str = "model",
    max_batch_size: int = DEFAULT_MAX_BATCH,
    engine: Engine | None = None,
    exit_on_load_failure: bool = False,
    dtype: str = "auto",
    api_key: str | None = None,
) -> FastAPI:
    """The model server's app.

    Args:
        model_dir: what to serve (see `resolve_checkpoint`); loaded on a thread at startup.
        adapters: more LoRA adapters by name (`ADAPTER_HEADER` picks one).
        served_name: the model name in OpenAI answers and `/v1/models`.
        max_batch_size: most requests decoded together.
        engine: an engine already loaded (tests); then `model_dir` is not used.
        exit_on_load_failure: end the process (exit code 3) if the model fails to load.
        dtype: the weights' dtype, "auto" or a name (see `loader.serving_dtype`).
        api_key: the key every route but the probes demands (`Authorization: Bearer`);
            None checks none, for an app used in-process only (the command line always
            sets one).
    """
    service = ModelService(served_name)
    load: LoadSpec | None = None
    if engine is not None:
        service.attach(engine)
    elif model_dir is not None:
        load = LoadSpec(model_dir, adapters or {}, max_batch_size, dtype, exit_on_load_failure)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if load is not None and service.engine is None:
            threading.Thread(
                target=load.load_into, args=(service,), name="chattune-load", daemon=True
            ).start()
        yield
        if service.engine is not None:
            service.engine.stop()

    app = FastAPI(title="chattune model server", lifespan=lifespan)
    install_error_handlers(app)
    if api_key is not None:
        app.add_middleware(InstanceKeyCheck, key=api_key)
    app.state.service = service
    for router in ROUTERS:
        app.include_router(router)
    return app
