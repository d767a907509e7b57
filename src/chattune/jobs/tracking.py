"""MLflow tracking of jobs: one run per job in the workspace's store (or any server)."""

from __future__ import annotations

import math
import time
from typing import Any

from chattune.workspace import Workspace


def client(ws: Workspace):
    import mlflow

    return mlflow.MlflowClient(ws.mlflow_tracking_uri)


def start_run(ws: Workspace, experiment: str, job_name: str, run_id: str | None) -> str:
    """The job's run: created on first start, reopened on resume."""
    c = client(ws)
    if run_id:
        c.update_run(run_id, status="RUNNING")
        return run_id
    exp = c.get_experiment_by_name(experiment)
    exp_id = (
        exp.experiment_id
        if exp
        else c.create_experiment(experiment, artifact_location=ws.mlflow_artifact_location)
    )
    run = c.create_run(exp_id, run_name=job_name, tags={"chattune.job": job_name})
    return run.info.run_id


def log_params(ws: Workspace, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    c = client(ws)
    existing = c.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        c.log_batch(run_id, params=new[i : i + 100])


def log_metrics(ws: Workspace, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if math.isfinite(float(v))]
    if batch:
        client(ws).log_batch(run_id, metrics=batch)


def end_run(ws: Workspace, run_id: str, status: str) -> None:
    mlflow_status = {"Completed": "FINISHED", "Failed": "FAILED", "Canceled": "KILLED"}[status]
    client(ws).set_terminated(run_id, status=mlflow_status)
