"""Pipeline jobs: the object `@dsl.pipeline` builds and `jobs.create_or_update` submits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chattune.aml.entities._assets import Output
from chattune.aml.entities._base import Printable


@dataclass(repr=False)
class PipelineJobSettings(Printable):
    """As `pipeline_job.settings`: `force_rerun` ignores cached step outputs;
    `continue_on_step_failure` runs the steps that do not depend on a failed one."""

    force_rerun: bool = False
    continue_on_step_failure: bool = False
    default_compute: str | None = None
    default_datastore: str | None = None


@dataclass(repr=False)
class PipelineJob(Printable):
    """As `azure.ai.ml.entities.PipelineJob`.

    Built by a `@dsl.pipeline` function (then `status` is None and `name` is None until it
    is submitted), or returned by `jobs.create_or_update` / `jobs.get`.

    Attributes:
        name: the job name, set at submission.
        display_name: the `name` given to `@pipeline`.
        experiment_name: the MLflow experiment.
        status: NotStarted, Queued, Running, Completed, Failed or Canceled.
        outputs: pipeline output name -> `Output` (`path` = `azureml://jobs/J/outputs/N`).
        settings: `PipelineJobSettings`.
    """

    name: str | None = None
    display_name: str | None = None
    experiment_name: str | None = None
    description: str | None = None
    status: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    settings: PipelineJobSettings = field(default_factory=PipelineJobSettings)
    tags: dict[str, str] = field(default_factory=dict)
    studio_url: str | None = None
    creation_context: dict[str, Any] | None = None
    _node: Any = None  # the component node the pipeline function called

    def __repr__(self) -> str:
        return f"PipelineJob(name={self.name!r}, status={self.status!r})"


def job_output(job_name: str, output: str, type_: str) -> Output:
    return Output(type=type_, path=f"azureml://jobs/{job_name}/outputs/{output}")
