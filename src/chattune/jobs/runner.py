"""The job runner: one detached process per job, `python -m chattune.jobs.runner WS NAME`.

It waits for its turn on the job's compute (jobs on one compute run one at a time, in
the order they were created), runs the pipeline's steps, records each step's state in the
workspace database and tracks the job in MLflow. Its output goes to the job's log file,
which `chattune job stream` follows. SIGTERM (`chattune job cancel`) stops it cleanly:
finetune saves a checkpoint first.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chattune.errors import ChattuneError
from chattune.jobs import tracking
from chattune.jobs.outputs import StepOutput
from chattune.jobs.pipeline import PIPELINE, Cancelled, Step, StepContext
from chattune.jobs.store import (
    get_job,
    list_jobs,
    log_path,
    merge_metrics,
    update_job,
    update_step,
)
from chattune.train.params import FinetuneParams
from chattune.workspace import Workspace
from chattune.workspace.processes import pid_alive, spawn_detached

QUEUE_POLL_S = 1.0


def spawn_runner(ws: Workspace, name: str) -> int:
    """Start the runner of job `name`, detached: it outlives the command that started it."""
    pid = spawn_detached(["chattune.jobs.runner", str(ws.root), name], log_path(ws, name))
    update_job(ws, name, pid=pid)
    return pid


def _say(msg: str) -> None:
    print(f"{datetime.now():%H:%M:%S} {msg}", flush=True)


def _on_sigterm(*_: Any) -> None:
    raise Cancelled()


def _wait_for_turn(ws: Workspace, name: str, compute: str) -> int | None:
    """Block until no earlier job on `compute` is waiting or running; return the lock fd.

    Returns None if the job was cancelled while it waited.
    """
    lock = ws.lock_path(f"compute-{compute}")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    said = False
    while True:
        me = get_job(ws, name)
        if me.status == "Canceled":
            os.close(fd)
            return None
        ahead = [
            j.name
            for j in list_jobs(ws)
            if j.compute == compute
            and j.created_at < me.created_at
            and ((j.status == "Queued" and pid_alive(j.pid)) or j.status == "Running")
        ]
        if not ahead:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                ahead = ["a job holding the compute"]
        if not said:
            _say(f"queued on compute {compute!r} behind {', '.join(ahead)}")
            said = True
        time.sleep(QUEUE_POLL_S)


def run(ws: Workspace, name: str) -> int:
    """Run (or resume) job `name` to the end. Returns the process exit code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    job = get_job(ws, name)
    try:
        fd = _wait_for_turn(ws, name, job.compute)
    except Cancelled:
        fd = None
    if fd is None:
        update_job(ws, name, status="Canceled", ended_at=time.time(), pid=None)
        _say("job cancelled before it started")
        return 1
    update_job(
        ws,
        name,
        status="Running",
        started_at=job.started_at or time.time(),
        pid=os.getpid(),
        error=None,
        ended_at=None,
    )
    job = get_job(ws, name)
    params = FinetuneParams.model_validate(job.spec.parameters)
    run_id = None
    try:
        run_id = tracking.start_run(ws, job.experiment, name, job.mlflow_run_id)
        update_job(ws, name, mlflow_run_id=run_id)
        tracking.log_params(
            ws,
            run_id,
            {
                **params.to_component_dict(),
                "model": job.spec.model,
                "train_file": job.spec.train_file,
                "validation_file": job.spec.validation_file,
                "test_file": job.spec.test_file,
            },
        )
    except Exception as exc:  # tracking must not cost the user their training run
        _say(f"warning: MLflow tracking unavailable ({exc}); the job runs without it")
    ctx = StepContext(ws=ws, job=job, params=params, log=_say, run_id=run_id)
    status = _run_steps(ws, ctx)
    job = get_job(ws, name)
    update_job(ws, name, status=status, ended_at=time.time(), pid=None)
    if run_id:
        try:
            tracking.end_run(ws, run_id, status)
        except Exception as exc:
            _say(f"warning: could not close the MLflow run ({exc})")
    _say(f"job {name} {status.lower()}")
    os.close(fd)
    return 0 if status == "Completed" else 1


def _run_steps(ws: Workspace, ctx: StepContext, pipeline: tuple[Step, ...] = PIPELINE) -> str:
    """Run the steps in order, each with the typed outputs of the steps it needs; record
    each step's status and output. Returns the job's final status."""
    name = ctx.job.name
    failed = False
    outputs: dict[str, StepOutput] = {}  # step name -> its output, for the steps after it
    for i, step in enumerate(pipeline):
        record = get_job(ws, name).steps.get(step.name, {})
        if any(need not in outputs for need in step.needs):
            update_step(ws, name, step.name, status="Skipped")
            failed = True
            continue
        if record.get("status") == "Completed":
            try:
                outputs[step.name] = step.output.model_validate(record.get("state", {}))
            except ValidationError as exc:
                _say(f"[{step.name}] its recorded output is unreadable ({exc}); running it again")
            else:
                _say(f"[{step.name}] completed earlier")
                continue
        _say(f"[{step.name}] starting")
        update_step(ws, name, step.name, status="Running", started_at=time.time(), error=None)
        t0 = time.monotonic()
        try:
            out = step.run(ctx, *(outputs[need] for need in step.needs))
        except Cancelled:
            update_step(ws, name, step.name, status="Canceled", ended_at=time.time())
            _say(f"[{step.name}] cancelled")
            return "Canceled"
        except ChattuneError as exc:
            _fail(ws, name, step.name, exc.message + (f" Fix: {exc.fix}" if exc.fix else ""))
        except Exception as exc:
            traceback.print_exc()
            _fail(ws, name, step.name, f"{type(exc).__name__}: {exc}")
        else:
            outputs[step.name] = out
            update_step(
                ws,
                name,
                step.name,
                status="Completed",
                ended_at=time.time(),
                duration_s=round(time.monotonic() - t0, 2),
                state=out.stored(),
                cached=out.cached,
            )
            if metrics := out.job_metrics():
                merge_metrics(ws, name, metrics)
            if folders := out.job_outputs():
                update_job(ws, name, outputs=folders)
            _say(
                f"[{step.name}] completed in {time.monotonic() - t0:.1f}s"
                + (" (cached)" if out.cached else "")
            )
            continue
        failed = True
        if not ctx.job.spec.continue_on_step_failure:
            for rest in pipeline[i + 1 :]:
                update_step(ws, name, rest.name, status="Skipped")
            break
    return "Failed" if failed else "Completed"


def _fail(ws: Workspace, name: str, step: str, error: str) -> None:
    _say(f"[{step}] failed: {error}")
    update_step(ws, name, step, status="Failed", ended_at=time.time(), error=error)
    update_job(ws, name, error=f"step {step} failed: {error}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ws = Workspace.open(Path(argv[0]))
    return run(ws, argv[1])


if __name__ == "__main__":
    sys.exit(main())
