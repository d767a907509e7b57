"""The command line of one model-server instance (`python -m chattune.serving.model_server`).

    python -m chattune.serving.model_server --model-dir PATH [--adapter NAME=PATH ...]
        --host 127.0.0.1 --port P --served-name NAME [--max-batch-size 16] [--parent-pid PID]
        [--torch-threads N] [--dtype auto|float32|bfloat16|float16]

It listens at once and loads the model on a thread: `GET /health` is 200 while the process
and the engine thread live (503 once the engine thread died), `GET /ready` is 503 until the
model is loaded, then 200. Every other route needs `Authorization: Bearer <key>` with the
key in `$CHATTUNE_MODEL_SERVER_KEY` (the supervisor sets it); started by hand without it,
the server makes a key and prints it once. A model that fails to load ends the process with
exit code 3 and the reason as the last line of its log (what the supervisor reports).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import uvicorn

from chattune.host.malloc import tune_malloc
from chattune.kernels.attention import attention_kernel
from chattune.models.loading import DTYPE_ENV, SERVING_DTYPES
from chattune.serving.keys import INSTANCE_KEY_ENV, new_key
from chattune.serving.model_server.app import create_app
from chattune.serving.model_server.engine import DEFAULT_MAX_BATCH

log = logging.getLogger("chattune.serving")


def _watch_parent(pid: int, server: Any) -> None:
    """Stop the server when process `pid` is gone (polled each second)."""
    while True:
        time.sleep(1.0)
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            log.warning("parent process %d is gone: shutting down", pid)
            server.should_exit = True
            time.sleep(10)
            os._exit(0)  # graceful shutdown hung


def _adapter_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: write NAME=PATH")
    return name, Path(path)


def _api_key() -> str:
    """The key this server demands: `$CHATTUNE_MODEL_SERVER_KEY` (taken out of the
    environment, so nothing this process starts inherits it), or a fresh one, printed."""
    key = os.environ.pop(INSTANCE_KEY_ENV, "")
    if key:
        return key
    key = new_key()
    log.warning(
        "no $%s set: this server's key is %s; send it as `Authorization: Bearer <key>` "
        "(e.g. the openai package's api_key)",
        INSTANCE_KEY_ENV,
        key,
    )
    return key


def main(argv: list[str] | None = None) -> int:
    """Run one model server (the command line of this module's docstring)."""
    ap = argparse.ArgumentParser(prog="python -m chattune.serving.model_server")
    ap.add_argument("--model-dir", type=Path, required=True, help="what to serve")
    ap.add_argument("--adapter", type=_adapter_arg, action="append", default=[],
                    metavar="NAME=PATH", help="a LoRA adapter on the base (repeat it)")  # fmt: skip
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--served-name", required=True, help="model name in OpenAI answers")
    ap.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH)
    ap.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    ap.add_argument("--torch-threads", type=int, help="CPU threads per op (default: torch's); "
                    "instances sharing a CPU should split its cores")  # fmt: skip
    ap.add_argument("--dtype", choices=SERVING_DTYPES, default=os.environ.get(DTYPE_ENV, "auto"),
                    help=f"the weights' dtype (default ${DTYPE_ENV}, else auto: bf16 where the "
                    "hardware runs it, else fp16 on GPUs and fp32 on CPUs)")  # fmt: skip
    args = ap.parse_args(argv)
    attention_kernel()  # a bad CHATTUNE_ATTENTION_KERNEL fails at start, not in a prefill
    tune_malloc()  # prefill activations reused, not faulted in afresh at every prompt
    if args.torch_threads:
        # measured on 2 busy cores: a 16-row step of the tiny model took 99 ms with 2 threads
        # fighting other processes, 2.6 ms with 1
        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    app = create_app(
        args.model_dir,
        adapters=dict(args.adapter),
        served_name=args.served_name,
        max_batch_size=args.max_batch_size,
        exit_on_load_failure=True,
        dtype=args.dtype,
        api_key=_api_key(),
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, server), daemon=True).start()
    log.info("model server for %s listening on %s:%d", args.served_name, args.host, args.port)
    server.run()
    return 0
