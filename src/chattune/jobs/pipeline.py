"""The `chat_completion_pipeline`: validation -> model import -> preprocess -> finetune ->
evaluate -> convert, as one list of steps (`PIPELINE`).

Each step function takes the job's context and the typed outputs of the steps it needs,
wires them to one step module of `chattune.train` (or `chattune.models`), caches its output
folder by the hash of its inputs and returns its own typed output (`chattune.jobs.outputs`).
Its signature is its dependency list: `finetune(ctx, model: ModelImportOutput,
data: PreprocessOutput)` runs after model_import and preprocess, and is skipped when
either failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.errors import ChattuneError, DatasetError
from chattune.jobs import tracking
from chattune.jobs.cache import input_key, step_dir
from chattune.jobs.nodes import CONFIG_FILE, launch_command
from chattune.jobs.outputs import (
    ConvertOutput,
    DataFileSummary,
    EvaluateOutput,
    FinetuneOutput,
    ModelImportOutput,
    PreprocessOutput,
    StepOutput,
    ValidationOutput,
)
from chattune.jobs.store import JobRecord, job_dir, progress_path
from chattune.models.checkpoint import resolve_checkpoint
from chattune.models.importer import import_model, sha256_file
from chattune.models.store import get_model
from chattune.train.convert import ConvertConfig, run_convert
from chattune.train.finetune import EXIT_CANCELLED, FinetuneConfig
from chattune.train.params import RESUME_FIX, FinetuneParams, resume_checkpoint_problem
from chattune.train.preprocess import (
    PreprocessConfig,
    PreprocessReport,
    preprocess_cache_key,
    run_preprocess,
)
from chattune.train.preprocess_inputs import check_data_files
from chattune.workspace import Workspace, file_lock
from chattune.workspace.markers import is_done, mark_done


class StepFailed(ChattuneError):
    """A pipeline step failed; the message says which and why."""


class Cancelled(Exception):  # a control-flow signal, not an error
    """The job was asked to stop (SIGTERM)."""


@dataclass
class StepContext:
    """What every step gets besides its inputs: the job, its parameters, logging."""

    ws: Workspace
    job: JobRecord
    params: FinetuneParams
    log: Callable[[str], None]
    run_id: str | None

    def key(self, **parts: Any) -> str:
        if self.job.spec.force_rerun:
            parts["_force_rerun_job"] = self.job.name
        return input_key(**parts)

    def ran_before(self, step: str) -> bool:
        """Whether this job started `step` in an earlier run (`chattune job resume`)."""
        return self.job.steps.get(step, {}).get("status") in ("Running", "Failed", "Canceled")


@dataclass(frozen=True)
class Step:
    """One pipeline step: its function, its output type and the steps it needs.

    `needs` and `output` are read from the function's annotations (`Step.of`), so the
    signature is the only place a dependency is written.
    """

    name: str
    run: Callable[..., StepOutput]
    output: type[StepOutput]
    needs: tuple[str, ...]

    @classmethod
    def of(cls, func: Callable[..., StepOutput]) -> Step:
        hints = typing.get_type_hints(func)
        output = hints.pop("return")
        hints.pop("ctx")
        return cls(output.step, func, output, tuple(h.step for h in hints.values()))


# -- steps ---------------------------------------------------------------------------------
def validation(ctx: StepContext) -> ValidationOutput:
    """Check that the data files exist and are readable, and report bad rows up front.

    Each file's sha256 is recorded with its row counts: the registry's lineage of a model
    trained by this job names the exact data it saw."""
    spec = ctx.job.spec
    files = {"train": spec.train_file, "validation": spec.validation_file, "test": spec.test_file}
    missing = [f"{k}_file {p}" for k, p in files.items() if p is not None and not p.is_file()]
    if missing:
        raise DatasetError(
            "data file(s) not found: " + ", ".join(missing) + ".",
            fix="check the paths given to --train-file/--validation-file/--test-file.",
        )
    # checked when the job was created too; the files may have changed since
    check = check_data_files({f"{split}_file": path for split, path in files.items()})
    splits: dict[str, DataFileSummary] = {}
    for split, path in files.items():
        report = check.reports.get(f"{split}_file")
        if path is None or report is None:  # not given, or unreadable (in check.problems)
            continue
        splits[split] = DataFileSummary(
            path=path, sha256=sha256_file(path), rows=report.total, bad_rows=report.invalid
        )
        ctx.log(f"{split}: {path} has {report.total} rows, {report.invalid} bad")
        for reason, count in report.reasons.items():
            ctx.log(f"  {count} row(s) {reason}: preprocess drops them")
    check.raise_if_any()
    return ValidationOutput(splits=splits)


def model_import(ctx: StepContext, data: ValidationOutput) -> ModelImportOutput:
    """Resolve the job's model to a checkpoint folder, importing it (once) if needed.

    Runs after validation (`data`) so that a job with a missing file fails before a model
    is downloaded or converted."""
    ref = ctx.job.spec.model
    if Path(ref).expanduser().exists():
        mv = import_model(ctx.ws, ref, log=ctx.log).model
    else:
        name, _, version = ref.partition(":")
        mv = get_model(ctx.ws, name, version=version or None)
        if mv.path is None:
            mv = import_model(ctx.ws, mv.name, log=ctx.log).model
    assert mv.path is not None
    manifest = mv.path / "chattune_import.json"
    model_hash = (
        json.loads(manifest.read_text())["key"] if manifest.is_file() else input_key(p=str(mv.path))
    )
    model_dir = mv.path
    if mv.kind == "registered":  # a fine-tuned model trained further: one plain folder
        model_dir = _registered_checkpoint(ctx, mv.path, model_hash)
    ctx.log(f"model {mv.name}:{mv.version} at {model_dir}")
    return ModelImportOutput(
        model_dir=model_dir,
        model_name=mv.name,
        model_version=mv.version,
        model_hash=model_hash,
        lora_target_modules=mv.card.lora_target_modules,
    )


def _registered_checkpoint(ctx: StepContext, path: Path, model_hash: str) -> Path:
    """A registered model as the plain checkpoint training reads: weights and tokenizer in
    one folder (an MLflow folder keeps them apart), hard-linked into the step cache.

    Raises:
        StepFailed: the version holds an unmerged LoRA adapter.
    """
    ckpt = resolve_checkpoint(path)
    if ckpt.adapter_dir is not None:
        raise StepFailed(
            f"the registered model at {path} is a base model plus an unmerged LoRA adapter.",
            fix="register the job's mlflow_model_folder (merged) and train from that version.",
        )
    if ckpt.model_dir == ckpt.tokenizer_dir:
        return ckpt.model_dir
    out = step_dir(ctx.ws, "model_import", model_hash)
    with file_lock(out.with_name(out.name + ".lock")):
        if is_done(out):
            return out
        shutil.rmtree(out, ignore_errors=True)  # an unmarked folder of an older version
        staging = out.with_name(out.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for folder in (ckpt.model_dir, ckpt.tokenizer_dir):
            for f in folder.iterdir():
                if f.is_file():
                    try:
                        os.link(f, staging / f.name)
                    except OSError:
                        shutil.copy2(f, staging / f.name)
        mark_done(staging)
        staging.rename(out)
    return out


def preprocess(ctx: StepContext, model: ModelImportOutput) -> PreprocessOutput:
    """Tokenize the splits with the model's chat template (assistant-only labels)."""
    spec, p = ctx.job.spec, ctx.params
    cfg = PreprocessConfig(
        train_file=spec.train_file,
        validation_file=spec.validation_file,
        test_file=spec.test_file,
        model_dir=model.model_dir,
        max_seq_length=p.max_seq_length,
        output_dir=ctx.ws.root / "cache" / "preprocess",  # replaced below, once keyed
        seed=p.seed,
    )
    key = ctx.key(preprocess=preprocess_cache_key(cfg))
    out = step_dir(ctx.ws, "preprocess", key)
    cfg = cfg.model_copy(update={"output_dir": out})
    cached = is_done(out)
    if cached:
        ctx.log(f"reusing tokenized data from {out}")
        report = PreprocessReport.load(out)
    else:
        report = run_preprocess(cfg, ctx.log)
        mark_done(out)
    if ctx.run_id:
        tracking.log_metrics(
            ctx.ws, ctx.run_id, {f"preprocess_{k}": v for k, v in report.metrics().items()}
        )
    return PreprocessOutput(
        preprocess_dir=out,
        preprocess_key=key,
        max_seq_length=report.max_seq_length,
        cached=cached,
    )


def finetune(ctx: StepContext, model: ModelImportOutput, data: PreprocessOutput) -> FinetuneOutput:
    """Train in a child process (or one per device under torchrun); a cancelled or killed
    run continues from its last complete checkpoint when the job is resumed."""
    p = ctx.params
    start = p.resume_from_checkpoint
    key = ctx.key(
        data=data.preprocess_key,
        model=model.model_hash,
        params={
            **p.model_dump(
                exclude={"eval_sample_size", "eval_max_new_tokens", "merge_lora_weights"}
            ),
            # true/false only say where to start, not what is trained: both keep the key
            # of the jobs made before; a given checkpoint starts a different run
            "resume_from_checkpoint": str(start) if isinstance(start, Path) else False,
        },
    )
    out = step_dir(ctx.ws, "finetune", key)
    if is_done(out):
        ctx.log(f"reusing trained model from {out}")
        return FinetuneOutput(finetune_dir=out, finetune_key=key, cached=True)
    restarted = ctx.ran_before("finetune")  # then its own checkpoints come first
    # checked at job creation too; the folder may have gone since
    problem = resume_checkpoint_problem(start, p.apply_lora) if isinstance(start, Path) else None
    if problem and not restarted:
        raise StepFailed(problem + ".", fix=RESUME_FIX)
    out.mkdir(parents=True, exist_ok=True)
    cfg = FinetuneConfig(
        model_dir=model.model_dir,
        data_dir=data.preprocess_dir,
        output_dir=out,
        params=p,
        lora_target_modules=model.lora_target_modules,
        max_seq_length=data.max_seq_length,
        restarted=restarted,
        progress_file=progress_path(ctx.ws, ctx.job.name),
        mlflow_tracking_uri=ctx.ws.mlflow_tracking_uri,
        mlflow_run_id=ctx.run_id,
    )
    cfg_file = job_dir(ctx.ws, ctx.job.name) / CONFIG_FILE
    cfg_file.write_text(cfg.model_dump_json(indent=2))
    with file_lock(ctx.ws.lock_path(f"finetune-{key}")):
        code = _run_finetune_process(ctx, cfg_file)
    if code == EXIT_CANCELLED:
        raise Cancelled()
    if code != 0 or not is_done(out):
        raise StepFailed(
            f"finetune exited with code {code}; its log is above "
            f"(chattune job stream {ctx.job.name}).",
            fix=f"fix the cause, then `chattune job resume {ctx.job.name}` continues from the "
            "last checkpoint.",
        )
    metrics = json.loads((out / "metrics.json").read_text())
    if ctx.run_id:
        # prefixed: the per-step train_loss / eval_loss series stay as the Trainer logged them
        tracking.log_metrics(
            ctx.ws,
            ctx.run_id,
            {f"final_{k}": v for k, v in metrics.items()},
            step=int(metrics.get("global_step", 0)),
        )
    return FinetuneOutput(
        finetune_dir=out,
        finetune_key=key,
        final_train_loss=metrics.get("train_loss"),
        final_eval_loss=metrics.get("eval_loss"),
    )


def _run_finetune_process(ctx: StepContext, cfg_file: Path) -> int:
    cmd = launch_command(ctx.params, cfg_file, ctx.job.name)
    ctx.log("launching: " + " ".join(cmd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=sys.stdout, stderr=sys.stderr, env=env)
    try:
        return proc.wait()
    except Cancelled:
        ctx.log("cancelling: asking finetune to save a checkpoint and stop")
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise


def evaluate(
    ctx: StepContext, model: ModelImportOutput, data: PreprocessOutput, trained: FinetuneOutput
) -> EvaluateOutput:
    """Perplexity and BLEU/ROUGE of generated replies on the test split."""
    # torch and transformers load with the step, not with every CLI command that imports jobs
    from chattune.evaluate.step import EvaluateConfig, run_evaluate

    p = ctx.params
    key = ctx.key(
        model=trained.finetune_key,
        n=p.eval_sample_size,
        tokens=p.eval_max_new_tokens,
        prompt=data.max_seq_length,
    )
    out = step_dir(ctx.ws, "evaluate", key)
    metrics_file = out / "metrics.json"
    cached = is_done(out)
    if cached:
        ctx.log(f"reusing evaluation from {out}")
        metrics = json.loads(metrics_file.read_text())
    else:
        tuned, adapter = _trained(model, trained)
        metrics = run_evaluate(
            EvaluateConfig(
                model_dir=tuned,
                adapter_dir=adapter,
                test_tokenized=data.preprocess_dir / "test.parquet",
                test_messages=data.preprocess_dir / "test_messages.jsonl",
                sample_size=p.eval_sample_size,
                max_new_tokens=p.eval_max_new_tokens,
                # the context trained on, less the reply: as long as training ever saw
                max_prompt_tokens=max(data.max_seq_length - p.eval_max_new_tokens, 16),
                batch_size=max(p.per_device_eval_batch_size, 8),
                precision=p.precision,
                output_dir=out,
                seed=p.seed,
            ),
            ctx.log,
        )
        mark_done(out)
    ctx.log("evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if ctx.run_id:
        tracking.log_metrics(ctx.ws, ctx.run_id, {f"test_{k}": v for k, v in metrics.items()})
    return EvaluateOutput(evaluate_dir=out, metrics=metrics, cached=cached)


def _trained(model: ModelImportOutput, trained: FinetuneOutput) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) of the finetune output."""
    tuned = trained.finetune_dir / "model"
    if (tuned / "adapter_config.json").is_file():
        return model.model_dir, tuned
    return tuned, None


def convert(ctx: StepContext, model: ModelImportOutput, trained: FinetuneOutput) -> ConvertOutput:
    """The trained model as `pytorch_model_folder` and `mlflow_model_folder`, linked from
    the job's `outputs/` folder."""
    p = ctx.params
    key = ctx.key(model=trained.finetune_key, merge=p.merge_lora_weights)
    out = step_dir(ctx.ws, "convert", key)
    result = ConvertOutput(
        pytorch_model_folder=out / "pytorch_model_folder",
        mlflow_model_folder=out / "mlflow_model_folder",
        cached=is_done(out),
    )
    if result.cached:
        ctx.log(f"reusing converted model from {out}")
    else:
        tuned, adapter = _trained(model, trained)
        run_convert(
            ConvertConfig(
                model_dir=tuned,
                adapter_dir=adapter,
                merge_lora_weights=p.merge_lora_weights,
                pytorch_model_folder=result.pytorch_model_folder,
                mlflow_model_folder=result.mlflow_model_folder,
                metadata={
                    "base_model": f"{model.model_name}:{model.model_version}",
                    "job": ctx.job.name,
                },
            ),
            ctx.log,
        )
        mark_done(out)
    links = job_dir(ctx.ws, ctx.job.name) / "outputs"
    links.mkdir(parents=True, exist_ok=True)
    for name, target in result.job_outputs().items():
        link = links / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return result


PIPELINE: tuple[Step, ...] = tuple(
    Step.of(f) for f in (validation, model_import, preprocess, finetune, evaluate, convert)
)
"""The steps in the order they run; each needs only steps before it."""
STEPS: tuple[str, ...] = tuple(s.name for s in PIPELINE)
