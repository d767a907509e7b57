"""Job records in the workspace database."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.errors import ChattuneError, InvalidParameter
from chattune.jobs.spec import JobSpec
from chattune.workspace import Workspace
from chattune.workspace.processes import pid_alive

TERMINAL = ("Completed", "Failed", "Canceled")


class JobNotFound(ChattuneError):
    """No job of that name in the workspace."""


@dataclass
class JobRecord:
    name: str
    display_name: str
    experiment: str
    compute: str
    status: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    pid: int | None
    spec: JobSpec
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["spec"] = self.spec.model_dump(mode="json")
        return d


def job_dir(ws: Workspace, name: str) -> Path:
    """`jobs/<name>`, refused (PathOutsideWorkspace) where a link would lead it outside."""
    return ws.inside(ws.jobs_dir / name, under=ws.jobs_dir)


def log_path(ws: Workspace, name: str) -> Path:
    return job_dir(ws, name) / "logs" / "job.log"


def progress_path(ws: Workspace, name: str) -> Path:
    return job_dir(ws, name) / "progress.json"


def _record(row: Any) -> JobRecord:
    rec = JobRecord(
        name=row["name"],
        display_name=row["display_name"],
        experiment=row["experiment"],
        compute=row["compute"],
        status=row["status"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        pid=row["pid"],
        spec=JobSpec.model_validate_json(row["spec"]),
        steps=json.loads(row["steps"]),
        outputs=json.loads(row["outputs"]),
        metrics=json.loads(row["metrics"]),
        mlflow_run_id=row["mlflow_run_id"],
        error=row["error"],
    )
    if rec.status == "Running" and not pid_alive(rec.pid):
        # The runner died without saying so (SIGKILL, machine restart): the job is not
        # running any more; `chattune job resume` continues it from its last checkpoint.
        rec.status = "Failed"
        rec.error = rec.error or (
            f"the job's runner (pid {rec.pid}) died without finishing; "
            f"resume it with `chattune job resume {rec.name}`"
        )
    elif rec.status == "Queued" and rec.pid and not pid_alive(rec.pid):
        # started, then gone before its turn came (it failed to start: its log says why);
        # left Queued, `chattune job stream` would wait for it forever
        rec.status = "Failed"
        rec.error = rec.error or (
            f"the job's runner (pid {rec.pid}) exited before the job started (its log says "
            f"why); resume it with `chattune job resume {rec.name}`"
        )
    return rec


def create_job(ws: Workspace, spec: JobSpec, steps: Sequence[str] = ()) -> JobRecord:
    """Record a new Queued job whose `steps` (the pipeline's step names) are NotStarted.

    Raises:
        InvalidParameter: a job with that name exists.
        PathOutsideWorkspace: a link would lead the job's folder outside the workspace.
    """
    folder = job_dir(ws, spec.name)  # refused before the row is written
    with ws.write() as conn:
        if conn.execute("SELECT 1 FROM jobs WHERE name = ?", (spec.name,)).fetchone():
            raise InvalidParameter(
                f"a job named {spec.name!r} already exists.",
                fix="pick another --name, or leave it out to get a generated one.",
            )
        conn.execute(
            "INSERT INTO jobs(name, display_name, experiment, compute, status, created_at, spec,"
            " steps) VALUES (?, ?, ?, ?, 'Queued', ?, ?, ?)",
            (
                spec.name,
                spec.display_name or spec.name,
                spec.experiment_name,
                spec.compute,
                time.time(),
                spec.model_dump_json(),
                json.dumps({s: {"status": "NotStarted"} for s in steps}),
            ),
        )
    folder.joinpath("logs").mkdir(parents=True, exist_ok=True)
    return get_job(ws, spec.name)


def get_job(ws: Workspace, name: str) -> JobRecord:
    row = ws.db().execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
    if row is None:
        names = [
            r["name"]
            for r in ws.db().execute("SELECT name FROM jobs ORDER BY created_at DESC LIMIT 5")
        ]
        raise JobNotFound(
            f"no job named {name!r} in {ws.root}.",
            fix=f"recent jobs: {', '.join(names) or 'none'} (chattune job list).",
        )
    return _record(row)


def list_jobs(ws: Workspace) -> list[JobRecord]:
    return [_record(r) for r in ws.db().execute("SELECT * FROM jobs ORDER BY created_at")]


def update_job(ws: Workspace, name: str, **fields: Any) -> None:
    """Set columns of a job; dicts are stored as JSON."""
    cols = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()}
    with ws.write() as conn:
        conn.execute(
            f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in cols)} WHERE name = ?",
            (*cols.values(), name),
        )


def update_step(ws: Workspace, name: str, step: str, **fields: Any) -> None:
    """Merge `fields` into the record of one step (read-modify-write under the lock)."""
    with ws.write() as conn:
        row = conn.execute("SELECT steps FROM jobs WHERE name = ?", (name,)).fetchone()
        steps = json.loads(row["steps"])
        steps.setdefault(step, {}).update(fields)
        conn.execute("UPDATE jobs SET steps = ? WHERE name = ?", (json.dumps(steps), name))


def merge_metrics(ws: Workspace, name: str, metrics: dict[str, float]) -> None:
    with ws.write() as conn:
        row = conn.execute("SELECT metrics FROM jobs WHERE name = ?", (name,)).fetchone()
        merged = {**json.loads(row["metrics"]), **metrics}
        conn.execute("UPDATE jobs SET metrics = ? WHERE name = ?", (json.dumps(merged), name))
