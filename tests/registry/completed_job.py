"""A Completed fine-tuning job with real-shaped outputs, made without training.

The job is created through the job store and run by the runner's own step loop
(`_run_steps`, which records each step's state, the outputs and the metrics as a real run
does). The validation, model-import and convert steps are the real ones: the data files are
hashed, the tiny model is imported into the workspace and the convert step writes a genuine
`pytorch_model_folder` (base + `adapter/`, since `merge_lora_weights` is false) and MLflow
folder. Only preprocess, finetune and evaluate are stood in for: finetune's output is a
real PEFT adapter on the tiny model, made in a blink instead of trained.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from chattune.jobs import runner
from chattune.jobs.outputs import (
    EvaluateOutput,
    FinetuneOutput,
    ModelImportOutput,
    PreprocessOutput,
)
from chattune.jobs.pipeline import PIPELINE, STEPS, StepContext
from chattune.jobs.spec import build_spec
from chattune.jobs.store import JobRecord, create_job, get_job, update_job
from chattune.train.params import FinetuneParams
from chattune.workspace import Workspace
from tests.jobs.conftest import write_chats

METRICS = {"perplexity": 41.5, "bleu_1": 0.25, "rougeL": 0.31}
LOSSES = {"final_train_loss": 2.25, "final_eval_loss": 2.5}


def make_adapter(base_dir: Path, out: Path) -> Path:
    """A finetune step's output folder `out`: `out/model` holds a PEFT LoRA adapter on the
    model of `base_dir`, as the finetune step saves one (random, not trained)."""
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out / "model")
    return out


def make_job(
    ws: Workspace, model_dir: Path, finetune_dir: Path, data_dir: Path, name: str = "ft-job-1"
) -> JobRecord:
    """Create job `name` and run it to Completed with the stand-in training steps."""
    files = {
        "train": write_chats(data_dir / "train.jsonl", 24, seed=1),
        "test": write_chats(data_dir / "test.jsonl", 6, seed=2),
    }
    spec = build_spec(
        {
            "name": name,
            "model": str(model_dir),
            "train_file": str(files["train"]),
            "test_file": str(files["test"]),
            "parameters": {"merge_lora_weights": "false"},
        }
    )
    create_job(ws, spec, STEPS)

    def preprocess(ctx: StepContext, model: ModelImportOutput) -> PreprocessOutput:
        return PreprocessOutput(preprocess_dir=data_dir, preprocess_key="p", max_seq_length=64)

    def finetune(
        ctx: StepContext, model: ModelImportOutput, data: PreprocessOutput
    ) -> FinetuneOutput:
        return FinetuneOutput(finetune_dir=finetune_dir, finetune_key=f"ft-{name}", **LOSSES)

    def evaluate(
        ctx: StepContext, model: ModelImportOutput, data: PreprocessOutput, t: FinetuneOutput
    ) -> EvaluateOutput:
        return EvaluateOutput(evaluate_dir=data_dir, metrics=METRICS)

    stand_ins = {"preprocess": preprocess, "finetune": finetune, "evaluate": evaluate}
    steps = tuple(replace(s, run=stand_ins.get(s.name, s.run)) for s in PIPELINE)
    job = get_job(ws, name)
    params = FinetuneParams.model_validate(job.spec.parameters)
    ctx = StepContext(ws=ws, job=job, params=params, log=lambda _m: None, run_id=None)
    status = runner._run_steps(ws, ctx, steps)
    assert status == "Completed", get_job(ws, name).error
    update_job(ws, name, status="Completed")
    return get_job(ws, name)
