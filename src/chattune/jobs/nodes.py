"""Training across processes and machines: the one torchrun command, and joining a job's
finetune step from another node.

One process trains on one device. `number_of_gpu_to_use_finetuning` > 1 runs one process per
device under torchrun on this machine; `num_nodes_finetune` > 1 trains on that many machines
that share the workspace folder (a shared file system, as on a Slurm cluster). The machine
that runs the job (`chattune job create`) is one node; every other node runs
`chattune job join NAME`, which waits for the job's finetune step and starts the same
torchrun command. torchrun's c10d rendezvous at `CHATTUNE_RDZV_ENDPOINT` (host:port, set on
every node; the first node to come hosts it) gathers the nodes; global rank 0 alone writes
the checkpoints, the model and the MLflow metrics (`train.finetune`).

If a node dies, the others' collectives fail and the step fails; `chattune job resume NAME`
on the first node and `chattune job join NAME` on the others continue from the last complete
checkpoint.

Checked with torch 2.13's `torch.distributed.run` (c10d rendezvous, gloo on CPUs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from chattune.errors import ChattuneError, InvalidParameter
from chattune.jobs.store import get_job, job_dir
from chattune.train.finetune import FinetuneConfig
from chattune.train.params import FinetuneParams
from chattune.workspace import Workspace

RDZV_ENV = "CHATTUNE_RDZV_ENDPOINT"
CONFIG_FILE = "finetune_config.json"
Log = Callable[[str], None]


class NothingToJoin(ChattuneError):
    """The job ended, or does not train across nodes."""


def launch_command(p: FinetuneParams, cfg_file: Path, job: str) -> list[str]:
    """The command that runs the finetune step on this node: one process, or torchrun with
    a process per device, and the c10d rendezvous of `job` at `CHATTUNE_RDZV_ENDPOINT`
    when several nodes train.

    Raises:
        InvalidParameter: several nodes and no `CHATTUNE_RDZV_ENDPOINT`.
    """
    procs = max(p.number_of_gpu_to_use_finetuning, 1)
    if procs * p.num_nodes_finetune == 1:
        return [sys.executable, "-m", "chattune.train.finetune", str(cfg_file)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
    if p.num_nodes_finetune > 1:
        endpoint = os.environ.get(RDZV_ENV)
        if not endpoint:
            raise InvalidParameter(
                f"num_nodes_finetune={p.num_nodes_finetune} needs a rendezvous point shared by "
                "the nodes.",
                fix=f"set {RDZV_ENV}=host:port on every node (the first node's address and a "
                f"free port), run the job on one node and `chattune job join {job}` on the "
                "others; or set num_nodes_finetune to 1.",
            )
        cmd += [
            f"--nnodes={p.num_nodes_finetune}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            f"--rdzv_id={job}",
            "--max_restarts=0",
        ]
    else:
        cmd += ["--standalone"]
    return [*cmd, "-m", "chattune.train.finetune", str(cfg_file)]


def join(ws: Workspace, name: str, log: Log, poll: float = 0.5) -> int:
    """Wait for job `name`'s finetune step to start, then run this node's part of it.

    Returns:
        torchrun's exit code (0 when this node's processes finished their part).

    Raises:
        NothingToJoin: the job ended first, or trains on one node.
        JobNotFound: no such job.
    """
    announced = False
    while True:
        job = get_job(ws, name)
        step = job.steps.get("finetune", {})
        cfg_file = job_dir(ws, name) / CONFIG_FILE
        started = step.get("started_at") or 0.0
        if (
            step.get("status") == "Running"
            and cfg_file.is_file()
            and cfg_file.stat().st_mtime >= started - 1.0
        ):
            break
        if job.finished:
            raise NothingToJoin(
                f"job {name!r} is {job.status} and its finetune step is not running.",
                fix=f"`chattune job resume {name}` on the first node, then join again.",
            )
        if not announced:
            log(f"waiting for job {name!r} to start its finetune step")
            announced = True
        time.sleep(poll)
    params = FinetuneConfig.model_validate_json(cfg_file.read_text()).params
    if params.num_nodes_finetune < 2:
        raise NothingToJoin(
            f"job {name!r} trains on one node (num_nodes_finetune={params.num_nodes_finetune}).",
            fix="create the job with `--set num_nodes_finetune=N` to train on N nodes.",
        )
    cmd = launch_command(params, cfg_file, name)
    log("launching: " + " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, env=env, check=False).returncode
