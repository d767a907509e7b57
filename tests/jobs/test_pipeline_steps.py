"""The typed pipeline: one list of steps, typed outputs passed between them, outputs stored
as JSON and read back (also in the form jobs made before the typed outputs stored)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from chattune.errors import ChattuneError
from chattune.jobs import runner
from chattune.jobs.outputs import (
    ConvertOutput,
    EvaluateOutput,
    FinetuneOutput,
    ModelImportOutput,
    PreprocessOutput,
    StepOutput,
    ValidationOutput,
)
from chattune.jobs.pipeline import PIPELINE, STEPS, StepContext
from chattune.jobs.spec import build_spec
from chattune.jobs.store import create_job, get_job, update_step
from chattune.train.params import FinetuneParams
from chattune.workspace import Workspace

# what a job made before the typed outputs stored for each step (the runner's dict state)
LEGACY_STATE = {
    "validation": {
        "validation": {
            "train": {"path": "/d/train.jsonl", "sha256": "ab", "rows": 48, "bad_rows": 1}
        }
    },
    "model_import": {
        "model_dir": "/m/tiny",
        "model_name": "tiny",
        "model_version": "1",
        "model_hash": "h1",
        "lora_target_modules": ["q_proj", "v_proj"],
    },
    "preprocess": {
        "preprocess_dir": "/c/pre",
        "preprocess_key": "k1",
        "max_seq_length": 128,
        "cached": False,
    },
    "finetune": {
        "finetune_dir": "/c/ft",
        "finetune_key": "k2",
        "cached": False,
        "final_train_loss": 1.5,
    },
    "evaluate": {"evaluate_dir": "/c/ev", "metrics": {"perplexity": 9.0}, "cached": True},
    "convert": {
        "outputs": {"pytorch_model_folder": "/c/cv/pt", "mlflow_model_folder": "/c/cv/ml"},
        "cached": False,
    },
}


def test_one_list_of_steps_whose_signatures_are_the_dependencies() -> None:
    assert STEPS == ("validation", "model_import", "preprocess", "finetune", "evaluate", "convert")
    needs = {s.name: s.needs for s in PIPELINE}
    assert needs["finetune"] == ("model_import", "preprocess")
    assert needs["convert"] == ("model_import", "finetune")  # not evaluate: runs if it fails
    for i, step in enumerate(PIPELINE):
        assert issubclass(step.output, StepOutput) and step.output.step == step.name
        assert set(step.needs) <= set(STEPS[:i]), f"{step.name} needs a later step"


@pytest.mark.parametrize("step", STEPS)
def test_an_output_stored_by_a_job_made_before_reads_back_typed(step: str) -> None:
    output = next(s.output for s in PIPELINE if s.name == step)
    typed = output.model_validate(LEGACY_STATE[step])
    assert output.model_validate(typed.stored()) == typed  # the new stored form round-trips


def test_legacy_values_land_in_the_typed_fields() -> None:
    val = ValidationOutput.model_validate(LEGACY_STATE["validation"])
    assert val.splits["train"].rows == 48 and val.stored()["validation"]["train"]["sha256"] == "ab"
    conv = ConvertOutput.model_validate(LEGACY_STATE["convert"])
    assert conv.mlflow_model_folder == Path("/c/cv/ml")
    assert conv.job_outputs() == LEGACY_STATE["convert"]["outputs"]
    ft = FinetuneOutput.model_validate(LEGACY_STATE["finetune"])
    assert ft.job_metrics() == {"train_loss": 1.5}  # no eval loss recorded: none reported
    assert EvaluateOutput.model_validate(LEGACY_STATE["evaluate"]).job_metrics() == {
        "perplexity": 9.0
    }


def _job(ws: Workspace, tmp_path: Path, **spec) -> StepContext:
    train = tmp_path / "train.jsonl"
    train.write_text("")
    create_job(ws, build_spec({"name": "j", "model": "m", "train_file": str(train), **spec}), STEPS)
    job = get_job(ws, "j")
    return StepContext(ws=ws, job=job, params=FinetuneParams(), log=print, run_id=None)


def test_a_job_made_before_resumes_with_its_recorded_outputs_typed(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Steps completed by a job made before are not run again: the later steps get their
    recorded outputs as typed objects."""
    ctx = _job(workspace, tmp_path)
    for step in ("validation", "model_import", "preprocess"):
        update_step(workspace, "j", step, status="Completed", state=LEGACY_STATE[step])
    update_step(workspace, "j", "model_import", state={"model_dir": "/m/tiny"})  # unreadable
    seen: dict[str, tuple] = {}

    def stand_in(step):
        def run(ctx: StepContext, *inputs: StepOutput) -> StepOutput:
            seen[step.name] = inputs
            return step.output.model_validate(LEGACY_STATE[step.name])

        return run

    ran_again = {"model_import", "finetune", "evaluate", "convert"}
    pipeline = tuple(replace(s, run=stand_in(s)) if s.name in ran_again else s for s in PIPELINE)
    assert runner._run_steps(workspace, ctx, pipeline) == "Completed"
    # validation and preprocess were read back; model_import's record was unreadable: rerun
    assert set(seen) == ran_again
    model, data = seen["finetune"]
    assert isinstance(model, ModelImportOutput) and model.model_dir == Path("/m/tiny")
    assert isinstance(data, PreprocessOutput) and data.max_seq_length == 128
    assert isinstance(seen["model_import"][0], ValidationOutput)
    job = get_job(workspace, "j")
    assert job.metrics == {"train_loss": 1.5, "perplexity": 9.0}
    assert job.outputs == LEGACY_STATE["convert"]["outputs"]
    assert job.steps["evaluate"]["cached"] and not job.steps["convert"]["cached"]
    assert job.steps["finetune"]["state"]["finetune_dir"] == "/c/ft"  # stored as JSON


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_failed_step_skips_what_needs_it(
    keep_going: bool, workspace: Workspace, tmp_path: Path
) -> None:
    ctx = _job(workspace, tmp_path, continue_on_step_failure=keep_going)
    ran: list[str] = []

    def stand_in(step):
        def run(ctx: StepContext, *inputs: StepOutput) -> StepOutput:
            ran.append(step.name)
            if step.name == "evaluate":
                raise ChattuneError("no test rows", fix="give a test file")
            return step.output.model_validate(LEGACY_STATE[step.name])

        return run

    pipeline = tuple(replace(s, run=stand_in(s)) for s in PIPELINE)
    assert runner._run_steps(workspace, ctx, pipeline) == "Failed"
    job = get_job(workspace, "j")
    assert job.steps["evaluate"]["status"] == "Failed"
    assert "no test rows Fix: give a test file" in job.steps["evaluate"]["error"]
    # convert does not need evaluate: it runs when the job continues on failure
    assert ("convert" in ran) is keep_going
    assert job.steps["convert"]["status"] == ("Completed" if keep_going else "Skipped")
