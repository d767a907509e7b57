"""Job records: a job whose runner is gone is not shown as still queued or running."""

from __future__ import annotations

import subprocess
import sys

from chattune.jobs.pipeline import STEPS
from chattune.jobs.spec import build_spec
from chattune.jobs.store import create_job, get_job, update_job
from chattune.workspace import Workspace


def test_a_queued_job_whose_runner_exited_is_failed_with_the_way_on(
    workspace: Workspace, tmp_path
) -> None:
    spec = build_spec({"name": "q", "model": "m", "train_file": str(tmp_path / "t.jsonl")})
    create_job(workspace, spec, STEPS)
    assert get_job(workspace, "q").status == "Queued"  # no runner yet: waiting to start
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    update_job(workspace, "q", pid=int(gone.stdout))  # a runner that failed at start-up
    job = get_job(workspace, "q")
    assert job.status == "Failed" and job.finished
    assert "exited before the job started" in job.error and "chattune job resume q" in job.error
