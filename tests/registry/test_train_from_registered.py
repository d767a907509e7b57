"""A registered fine-tuned model is a base for a new job: the model-import step turns its
MLflow folder (weights in model/, tokenizer in components/tokenizer/) into one checkpoint."""

from __future__ import annotations

import os

import pytest

from chattune.jobs.outputs import ValidationOutput
from chattune.jobs.pipeline import StepContext, StepFailed, model_import
from chattune.jobs.spec import JobSpec
from chattune.jobs.store import JobRecord
from chattune.registry import register_model
from chattune.train.params import parse_params
from chattune.workspace import Workspace

VALIDATED = ValidationOutput(splits={})  # model_import runs after validation


def _ctx(ws: Workspace, job: JobRecord, model: str) -> StepContext:
    spec = JobSpec(model=model, train_file=job.spec.train_file)
    record = JobRecord(**{**job.__dict__, "name": "next-job", "spec": spec})
    return StepContext(ws=ws, job=record, params=parse_params({}), log=lambda _m: None, run_id=None)


def test_a_registered_mlflow_model_trains_further(workspace: Workspace, job: JobRecord) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mv = register_model(
        workspace,
        name="tiny-ft",
        path=f"azureml://jobs/{job.name}/outputs/trained_model",
        type="mlflow_model",
    )
    out = model_import(_ctx(workspace, job, f"tiny-ft:{mv.version}"), VALIDATED)
    folder = out.model_dir
    assert folder != mv.path and out.model_version == mv.version
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template and model.config.vocab_size == len(tok)
    # hard links into the registered files, not copies
    weights = next(p for p in os.scandir(folder) if p.name.endswith(".safetensors"))
    assert os.stat(weights.path).st_nlink > 1
    # a second job reuses the assembled folder
    assert (
        model_import(_ctx(workspace, job, f"tiny-ft:{mv.version}"), VALIDATED).model_dir == folder
    )


def test_an_unmerged_adapter_is_refused_with_the_fix(workspace: Workspace, job: JobRecord) -> None:
    from chattune.models.checkpoint import resolve_checkpoint

    mv = register_model(
        workspace,
        name="tiny-adapter",
        path=f"jobs/{job.name}/outputs/pytorch_model_folder",
        type="custom_model",
    )
    assert resolve_checkpoint(mv.path).adapter_dir is not None  # the fixture's adapter/ kept
    with pytest.raises(StepFailed, match="mlflow_model_folder"):
        model_import(_ctx(workspace, job, f"tiny-adapter:{mv.version}"), VALIDATED)
