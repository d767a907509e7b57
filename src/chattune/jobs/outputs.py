"""What each pipeline step hands to the steps after it: one typed model per step.

A step function returns its output model; the steps that need it take it as a typed
argument (`chattune.jobs.pipeline`). The runner stores each output as JSON in the job's
step record (`JobRecord.steps[step]["state"]`) and reads it back with `model_validate` when
a job is resumed, so the field names below are also the stored keys: renaming one would
orphan the records of jobs made before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StepOutput(BaseModel):
    """The fields every step output has, and what the job record takes from it."""

    # "ignore": records written by older versions may carry keys since dropped
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    step: ClassVar[str]

    cached: bool = Field(False, description="Reused from the step cache, not computed again.")

    def job_metrics(self) -> dict[str, float]:
        """Metrics this step adds to the job record (`chattune job show`)."""
        return {}

    def job_outputs(self) -> dict[str, str]:
        """Named output folders this step adds to the job record."""
        return {}

    def stored(self) -> dict[str, Any]:
        """The JSON form kept in the job's step record."""
        return self.model_dump(mode="json", by_alias=True)


class DataFileSummary(BaseModel):
    path: Path
    sha256: str | None = Field(None, description="Hash of the file as the job read it.")
    rows: int
    bad_rows: int = Field(description="Rows the preprocess step drops (reported, not fatal).")


class ValidationOutput(StepOutput):
    step: ClassVar[str] = "validation"

    # stored as "validation": the registry's lineage reads the data hashes under that key
    splits: dict[str, DataFileSummary] = Field(alias="validation")


class ModelImportOutput(StepOutput):
    step: ClassVar[str] = "model_import"

    model_dir: Path = Field(description="Plain checkpoint folder: weights and tokenizer.")
    model_name: str
    model_version: str
    model_hash: str = Field(description="Cache key of the imported weights.")
    lora_target_modules: list[str]


class PreprocessOutput(StepOutput):
    step: ClassVar[str] = "preprocess"

    preprocess_dir: Path = Field(description="{train,validation,test}.parquet, report.json.")
    preprocess_key: str
    max_seq_length: int = Field(description="Resolved: -1 replaced by the model's context.")


class FinetuneOutput(StepOutput):
    step: ClassVar[str] = "finetune"

    finetune_dir: Path = Field(description="model/ (adapter or full weights), metrics.json.")
    finetune_key: str
    final_train_loss: float | None = None
    final_eval_loss: float | None = None

    def job_metrics(self) -> dict[str, float]:
        losses = {"train_loss": self.final_train_loss, "eval_loss": self.final_eval_loss}
        return {k: v for k, v in losses.items() if v is not None}


class EvaluateOutput(StepOutput):
    step: ClassVar[str] = "evaluate"

    evaluate_dir: Path
    metrics: dict[str, float] = Field(description="perplexity, bleu_1..4, rouge* on test.")

    def job_metrics(self) -> dict[str, float]:
        return dict(self.metrics)


class ConvertOutput(StepOutput):
    step: ClassVar[str] = "convert"

    pytorch_model_folder: Path
    mlflow_model_folder: Path

    @model_validator(mode="before")
    @classmethod
    def _from_outputs_dict(cls, data: Any) -> Any:
        # records written before the typed outputs: {"outputs": {name: folder}, ...}
        if isinstance(data, dict) and isinstance(data.get("outputs"), dict):
            return {**data["outputs"], **{k: v for k, v in data.items() if k != "outputs"}}
        return data

    def job_outputs(self) -> dict[str, str]:
        return {
            "pytorch_model_folder": str(self.pytorch_model_folder),
            "mlflow_model_folder": str(self.mlflow_model_folder),
        }
