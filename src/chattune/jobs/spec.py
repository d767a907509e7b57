"""What a fine-tuning job is asked to do: model, data files, parameters, settings.

The CLI (`chattune job create`), job YAML files (`-f job.yaml`) and the SDK all fill
one `JobSpec`.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chattune.errors import InvalidParameter
from chattune.workspace.names import JOB_NAME


def new_job_name() -> str:
    return time.strftime("job_%Y%m%d_%H%M%S_") + secrets.token_hex(2)


class JobSpec(BaseModel):
    """A fine-tuning job of the `chat_completion_pipeline`; each field says what it is
    (`chattune job params` lists the pipeline parameters that go under `parameters`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default_factory=new_job_name,
        description="Unique job name; generated (job_<date>_<time>_<hex>) when omitted.",
    )
    display_name: str | None = Field(None, description="Name shown in lists; default: name.")
    experiment_name: str = Field(
        "Default", description="MLflow experiment the job's run is tracked under."
    )
    compute: str = Field(
        "local", description="Compute the job runs on; jobs on one compute queue in order."
    )
    model: str = Field(
        description="Base model: NAME or NAME:VERSION in the workspace, or a model folder."
    )
    train_file: Path = Field(description="Training conversations (jsonl, ultrachat schema).")
    validation_file: Path | None = Field(
        None,
        description="Validation conversations; default: cut from train_file (10%, or 20% "
        "with a test_file).",
    )
    test_file: Path | None = Field(
        None,
        description="Test conversations for evaluate; default: the last 10% of train_file "
        "(the validation_file when only that is given).",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Pipeline parameters (`chattune job params` lists them), as given; "
        "stored resolved, with the model's model_specific_defaults applied.",
    )
    force_rerun: bool = Field(
        False, description="Ignore cached step outputs of earlier jobs; compute every step."
    )
    continue_on_step_failure: bool = Field(
        False, description="Run the steps that do not depend on a failed one."
    )
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description="Pipeline output names -> step outputs, e.g. the seed's "
        "{'trained_model': 'mlflow_model_folder'}.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        try:
            return JOB_NAME.check(v)
        except InvalidParameter as exc:  # pydantic reports a ValueError under the field
            why, fix = exc.message.removesuffix("."), (exc.fix or "").removesuffix(".")
            raise ValueError(f"{why}; {fix}") from None

    @field_validator("train_file", "validation_file", "test_file")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return v.expanduser().resolve() if v is not None else None


def load_job_yaml(path: Path) -> dict[str, Any]:
    """Read a job YAML file; relative data paths are taken relative to the file.

    Raises:
        InvalidParameter: the file is missing or not a YAML mapping.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidParameter(
            f"cannot read job file {path}: {exc}", fix="check the file."
        ) from exc
    if not isinstance(data, dict):
        raise InvalidParameter(
            f"job file {path} must be a YAML mapping (model:, train_file:, parameters: ...).",
            fix="see the job.yaml example in README.md (section 5).",
        )
    for key in ("train_file", "validation_file", "test_file"):
        if data.get(key) and not Path(data[key]).is_absolute():
            data[key] = str((path.parent / data[key]).resolve())
    return data


def build_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a job spec, reporting every problem by field name at once.

    Raises:
        InvalidParameter: unknown or invalid fields.
    """
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"])
            problems.append(
                f"unknown field `{field}`"
                if e["type"] == "extra_forbidden"
                else f"`{field}`: {e['msg']}"
            )
        raise InvalidParameter(
            "invalid job: " + "; ".join(problems) + ".",
            fix=f"job fields are {', '.join(JobSpec.model_fields)}; pipeline parameters go "
            "under `parameters:` (or --set key=value).",
        ) from None
