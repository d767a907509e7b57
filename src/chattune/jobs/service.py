"""Job operations behind the CLI and the SDK: submit, cancel, resume."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from chattune.compute.store import get_compute
from chattune.errors import ChattuneError, InvalidParameter
from chattune.jobs.pipeline import STEPS
from chattune.jobs.runner import spawn_runner
from chattune.jobs.spec import JobSpec, build_spec
from chattune.jobs.store import JobRecord, create_job, get_job, update_job
from chattune.models.store import get_model
from chattune.train.params import (
    RESUME_FIX,
    FinetuneParams,
    parse_params,
    resume_checkpoint_problem,
)
from chattune.train.preprocess_inputs import DATA_FILES, check_data_files
from chattune.workspace import Workspace
from chattune.workspace.processes import pid_alive


def resolve_parameters(
    ws: Workspace, spec: JobSpec, apply_model_defaults: bool
) -> tuple[FinetuneParams, dict[str, str]]:
    """The final parameters: the user's, then the model's `model_specific_defaults` on top
    (as the seed does). Returns them and the defaults that were applied."""
    defaults: dict[str, str] = {}
    if apply_model_defaults and not Path(spec.model).expanduser().exists():
        name, _, version = spec.model.partition(":")
        defaults = dict(get_model(ws, name, version=version or None).card.model_specific_defaults)
    return parse_params(spec.parameters, defaults), defaults


def submit_job(
    ws: Workspace, data: dict[str, Any], apply_model_defaults: bool = True, start: bool = True
) -> tuple[JobRecord, dict[str, str]]:
    """Validate everything, record the job and start its runner (detached).

    Every problem (job fields, parameters, files, model, compute) is reported at once. The
    data files are read once, streamed, without a tokenizer (`check_data_files`): a file
    that is empty, not in its format, without a valid conversation, or too small for
    training after the split is refused here rather than minutes later in preprocess.

    Raises:
        InvalidParameter: listing each problem by name; nothing is recorded or started.
    """

    spec = build_spec(data)
    problems: list[str] = []
    fixes: list[str] = []
    files: dict[str, Path | None] = {}
    for field in DATA_FILES:
        path = getattr(spec, field)
        if path is not None and not path.is_file():
            problems.append(f"`{field}` {path} does not exist")
        else:
            files[field] = path
    # one streamed pass over the data: what preprocess would refuse is refused now
    data_check = check_data_files(files)
    problems += data_check.problems
    fixes += data_check.fixes
    if not Path(spec.model).expanduser().exists():
        name, _, version = spec.model.partition(":")
        try:
            get_model(ws, name, version=version or None)
        except ChattuneError as exc:
            problems.append(f"`model` {spec.model!r}: {exc.message}")
            fixes.append(exc.fix or "")
    try:
        get_compute(ws, spec.compute)
    except ChattuneError as exc:
        problems.append(f"`compute`: {exc.message}")
        fixes.append(exc.fix or "")
    params, applied = None, {}
    try:
        params, applied = resolve_parameters(ws, spec, apply_model_defaults)
    except InvalidParameter as exc:
        problems.append(exc.message.rstrip("."))
        fixes.append(exc.fix or "")
    except ChattuneError:
        pass  # the model problem is reported above
    if params is not None and isinstance(params.resume_from_checkpoint, Path):
        problem = resume_checkpoint_problem(params.resume_from_checkpoint, params.apply_lora)
        if problem:
            problems.append(problem)
            fixes.append(RESUME_FIX)
    if problems or params is None:
        raise InvalidParameter(
            f"the job was not created: {'; '.join(problems)}.",
            fix=" ".join(f for f in fixes if f) or "correct the values named above.",
        )
    spec.parameters = params.to_component_dict()
    record = create_job(ws, spec, STEPS)
    if start:
        spawn_runner(ws, record.name)
    return get_job(ws, record.name), applied


def cancel_job(ws: Workspace, name: str, wait_s: float = 600.0) -> JobRecord:
    """Stop a job: a queued one never starts; a running one saves a checkpoint and stops."""
    job = get_job(ws, name)
    if job.finished:
        return job
    if job.status == "Queued" and not pid_alive(job.pid):
        update_job(ws, name, status="Canceled", ended_at=time.time())
        return get_job(ws, name)
    if job.status == "Queued":  # waiting for its turn: the runner sees this and exits
        update_job(ws, name, status="Canceled", ended_at=time.time())
    if job.pid and pid_alive(job.pid):
        os.kill(job.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and pid_alive(job.pid):
        time.sleep(0.2)
    return get_job(ws, name)


def resume_job(ws: Workspace, name: str) -> JobRecord:
    """Start a failed, cancelled or killed job again: completed steps are kept, finetune
    continues from its last complete checkpoint.

    Raises:
        InvalidParameter: the job is running or completed.
    """
    job = get_job(ws, name)
    if job.status == "Running" or (job.status == "Queued" and pid_alive(job.pid)):
        raise InvalidParameter(
            f"job {name!r} is {job.status.lower()}; only a stopped job can be resumed.",
            fix=f"follow it with `chattune job stream {name}`, or cancel it first.",
        )
    if job.status == "Completed":
        raise InvalidParameter(
            f"job {name!r} already completed.",
            fix="create a new job to train again (cached steps are reused).",
        )
    update_job(ws, name, status="Queued", error=None, ended_at=None, pid=None)
    spawn_runner(ws, name)
    return get_job(ws, name)
