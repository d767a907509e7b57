"""What a fine-tuning job is asked to do: model, data files, parameters, settings.

The CLI (`chattune job create`), job YAML files (`-f job.yaml`) and the SDK all fill
one `JobSpec`.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chattune.errors import InvalidParameter

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
STEPS = ("validation", "model_import", "preprocess", "finetune", "evaluate", "convert")


def new_job_name() -> str:
    return time.strftime("job_%Y%m%d_%H%M%S_") + secrets.token_hex(2)


class JobSpec(BaseModel):
    """A fine-tuning job of the `chat_completion_pipeline`.

    Attributes:
        name: unique job name (generated when omitted).
        model: a model name (`NAME` or `NAME:VERSION`) in the workspace, or a folder.
        train_file / validation_file / test_file: jsonl files in the ultrachat schema.
        parameters: the pipeline parameters (see `chattune.train.params.FinetuneParams`),
            already merged with the model's `model_specific_defaults` where asked.
        force_rerun: ignore cached step outputs of earlier jobs.
        continue_on_step_failure: run the steps that don't depend on a failed one.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default_factory=new_job_name)
    display_name: str | None = None
    experiment_name: str = "Default"
    compute: str = "local"
    model: str
    train_file: Path
    validation_file: Path | None = None
    test_file: Path | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    force_rerun: bool = False
    continue_on_step_failure: bool = False
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description="Pipeline output names -> step outputs, e.g. the seed's "
        "{'trained_model': 'mlflow_model_folder'}.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                "use letters, digits, '_', '.' or '-', starting with a letter or digit "
                "(at most 100 characters)"
            )
        return v

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
