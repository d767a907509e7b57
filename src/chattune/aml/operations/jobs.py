"""`MLClient.jobs`: create_or_update (submit), stream, get, list, begin_cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chattune.aml._component import COMPUTE_INPUTS
from chattune.aml._poller import LROPoller
from chattune.aml.entities import PipelineJob, PipelineJobSettings
from chattune.aml.entities._job import job_output
from chattune.aml.exceptions import JobException, ValidationException
from chattune.aml.operations._errors import azure_errors
from chattune.compute.store import get_compute
from chattune.jobs.service import cancel_job, submit_job
from chattune.jobs.store import get_job, list_jobs
from chattune.jobs.stream import stream_job, summary_lines
from chattune.workspace import Workspace

OUTPUT_TYPES = {"mlflow_model_folder": "mlflow_model", "pytorch_model_folder": "custom_model"}


def _from_record(job: Any) -> PipelineJob:
    outputs = {
        alias: job_output(job.name, alias, OUTPUT_TYPES.get(step_output, "uri_folder"))
        for alias, step_output in job.spec.outputs.items()
    }
    for name in job.outputs:
        outputs.setdefault(name, job_output(job.name, name, OUTPUT_TYPES.get(name, "uri_folder")))
    return PipelineJob(
        name=job.name,
        display_name=job.display_name,
        experiment_name=job.experiment,
        status=job.status,
        outputs=outputs,
        settings=PipelineJobSettings(
            force_rerun=job.spec.force_rerun,
            continue_on_step_failure=job.spec.continue_on_step_failure,
        ),
        studio_url=f"mlflow run {job.mlflow_run_id} (chattune ui)" if job.mlflow_run_id else None,
        creation_context={"created_at": job.created_at},
    )


class JobOperations:
    """Fine-tuning jobs of the workspace."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def create_or_update(
        self, job: PipelineJob, *, experiment_name: str | None = None, **_kwargs: Any
    ) -> PipelineJob:
        """Submit a `PipelineJob` built with `@dsl.pipeline`; it runs detached.

        The parameters are used as given: the seed applies the model's
        `model_specific_defaults` itself before calling the component.

        Raises:
            ValidationException: a problem with the model, files, computes or parameters
                (all reported at once).
        """

        node = job._node
        if node is None:
            raise ValidationException(
                "this PipelineJob was not built by a @pipeline function.",
                fix="build it with chattune.aml.dsl.pipeline.",
            )
        with azure_errors():
            for key in COMPUTE_INPUTS:  # every step's compute must exist, as on Azure
                if key in node.computes:
                    get_compute(self._ws, node.computes[key])
            data: dict[str, Any] = {
                "model": node.model,
                "compute": node.compute or job.settings.default_compute or "local",
                **{k: str(Path(v).expanduser().resolve()) for k, v in node.files.items()},
                "parameters": node.parameters,
                "force_rerun": bool(job.settings.force_rerun),
                "continue_on_step_failure": bool(job.settings.continue_on_step_failure),
                "experiment_name": experiment_name or job.experiment_name or "Default",
                "outputs": {k: o.path for k, o in job.outputs.items()},
            }
            if job.display_name:
                data["display_name"] = job.display_name
            if job.name:
                data["name"] = job.name
            record, _ = submit_job(self._ws, data, apply_model_defaults=False)
        return _from_record(record)

    def get(self, name: str) -> PipelineJob:
        """The job `name` with its status and outputs.

        Raises:
            ResourceNotFoundError: no such job.
        """

        with azure_errors():
            return _from_record(get_job(self._ws, name))

    def list(self, **_kwargs: Any) -> list[PipelineJob]:
        return [_from_record(j) for j in list_jobs(self._ws)]

    def stream(self, name: str) -> None:
        """Print the job's logs as they come, then a summary; returns when the job ends.
        Ctrl-C stops streaming, not the job.

        Raises:
            JobException: the job failed or was cancelled.
        """

        with azure_errors():
            try:
                job = stream_job(self._ws, name)
            except KeyboardInterrupt:
                print(f"\nStopped streaming; job {name} goes on (jobs.stream({name!r}) again).")
                return
        print("\n".join(summary_lines(job)))
        if job.status != "Completed":
            raise JobException(
                f"job {name} ended {job.status}: {job.error or 'see its log'}",
                fix=f"fix the cause and run `chattune job resume {name}`.",
            )

    def begin_cancel(self, name: str, **_kwargs: Any) -> LROPoller[None]:
        def work() -> None:
            with azure_errors():
                cancel_job(self._ws, name)

        return LROPoller(work, "job-cancel")
