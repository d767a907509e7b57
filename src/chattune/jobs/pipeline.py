"""The `chat_completion_pipeline`: validation -> model import -> preprocess -> finetune ->
evaluate -> convert. Each step here only wires inputs to one step module of
`chattune.train` (or `chattune.models`) and caches its output by the hash of its inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.errors import ChattuneError, DatasetError
from chattune.jobs import tracking
from chattune.jobs.cache import input_key, step_dir
from chattune.jobs.store import JobRecord, job_dir, progress_path
from chattune.train.params import FinetuneParams
from chattune.workspace import Workspace, file_lock

# step -> the steps whose outputs it needs
DEPENDS: dict[str, list[str]] = {
    "validation": [],
    "model_import": ["validation"],
    "preprocess": ["model_import"],
    "finetune": ["preprocess"],
    "evaluate": ["finetune"],
    "convert": ["finetune"],
}


class StepFailed(ChattuneError):
    """A pipeline step failed; the message says which and why."""


class Cancelled(Exception):  # a control-flow signal, not an error
    """The job was asked to stop (SIGTERM)."""


@dataclass
class StepContext:
    ws: Workspace
    job: JobRecord
    params: FinetuneParams
    log: Callable[[str], None]
    run_id: str | None
    state: dict[str, Any] = field(default_factory=dict)

    def key(self, **parts: Any) -> str:
        if self.job.spec.force_rerun:
            parts["_force_rerun_job"] = self.job.name
        return input_key(**parts)


# -- steps ---------------------------------------------------------------------------------
def validation(ctx: StepContext) -> dict[str, Any]:
    """Check that the data files exist and are readable, and report bad rows up front.

    Each file's sha256 is recorded with its row counts: the registry's lineage of a model
    trained by this job names the exact data it saw."""
    from chattune.data.validate import validate_file
    from chattune.models.importer import sha256_file

    spec = ctx.job.spec
    files = {"train": spec.train_file, "validation": spec.validation_file, "test": spec.test_file}
    missing = [f"{k}_file {p}" for k, p in files.items() if p is not None and not p.is_file()]
    if missing:
        raise DatasetError(
            "data file(s) not found: " + ", ".join(missing) + ".",
            fix="check the paths given to --train-file/--validation-file/--test-file.",
        )
    summary: dict[str, Any] = {}
    for split, path in files.items():
        if path is None:
            continue
        report = validate_file(path)
        summary[split] = {
            "path": str(path),
            "sha256": sha256_file(path),
            "rows": report.total,
            "bad_rows": report.invalid,
        }
        ctx.log(f"{split}: {path} has {report.total} rows, {report.invalid} bad")
        for reason, count in report.reasons.items():
            ctx.log(f"  {count} row(s) {reason}: preprocess drops them")
    return {"validation": summary}


def model_import(ctx: StepContext) -> dict[str, Any]:
    """Resolve the job's model to a checkpoint folder, importing it (once) if needed."""
    from chattune.models.importer import import_model
    from chattune.models.store import get_model

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
    return {
        "model_dir": str(model_dir),
        "model_name": mv.name,
        "model_version": mv.version,
        "model_hash": model_hash,
        "lora_target_modules": mv.card.lora_target_modules,
    }


def _registered_checkpoint(ctx: StepContext, path: Path, model_hash: str) -> Path:
    """A registered model as the plain checkpoint training reads: weights and tokenizer in
    one folder (an MLflow folder keeps them apart), hard-linked into the step cache.

    Raises:
        StepFailed: the version holds an unmerged LoRA adapter.
    """
    from chattune.models.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    if ckpt.adapter_dir is not None:
        raise StepFailed(
            f"the registered model at {path} is a base model plus an unmerged LoRA adapter.",
            fix="register the job's mlflow_model_folder (merged) and train from that version.",
        )
    if ckpt.model_dir == ckpt.tokenizer_dir:
        return ckpt.model_dir
    out = ctx.ws.root / "cache" / "model_import" / model_hash
    with file_lock(out.with_name(out.name + ".lock")):
        if (out / "config.json").is_file():
            return out
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
        staging.rename(out)
    return out


def preprocess(ctx: StepContext) -> dict[str, Any]:
    from chattune.train.preprocess import (
        PreprocessConfig,
        PreprocessReport,
        preprocess_cache_key,
        run_preprocess,
    )

    spec, p = ctx.job.spec, ctx.params
    cfg = PreprocessConfig(
        train_file=spec.train_file,
        validation_file=spec.validation_file,
        test_file=spec.test_file,
        model_dir=Path(ctx.state["model_dir"]),
        max_seq_length=p.max_seq_length,
        output_dir=ctx.ws.root / "cache" / "preprocess",  # replaced below, once keyed
        seed=p.seed,
    )
    key = ctx.key(preprocess=preprocess_cache_key(cfg))
    out = step_dir(ctx.ws, "preprocess", key)
    cfg = cfg.model_copy(update={"output_dir": out})
    cached = (out / "report.json").is_file()
    if cached:
        ctx.log(f"reusing tokenized data from {out}")
        report = PreprocessReport.load(out)
    else:
        report = run_preprocess(cfg, ctx.log)
    if ctx.run_id:
        tracking.log_metrics(
            ctx.ws, ctx.run_id, {f"preprocess_{k}": v for k, v in report.metrics().items()}
        )
    return {
        "preprocess_dir": str(out),
        "preprocess_key": key,
        "max_seq_length": report.max_seq_length,
        "cached": cached,
    }


def finetune(ctx: StepContext) -> dict[str, Any]:
    from chattune.train.finetune import EXIT_CANCELLED, SUCCESS, FinetuneConfig

    p = ctx.params
    key = ctx.key(
        data=ctx.state["preprocess_key"],
        model=ctx.state["model_hash"],
        params=p.model_dump(
            exclude={"eval_sample_size", "eval_max_new_tokens", "merge_lora_weights"}
        ),
    )
    out = step_dir(ctx.ws, "finetune", key)
    if (out / SUCCESS).is_file():
        ctx.log(f"reusing trained model from {out}")
        return {"finetune_dir": str(out), "finetune_key": key, "cached": True}
    out.mkdir(parents=True, exist_ok=True)
    cfg = FinetuneConfig(
        model_dir=Path(ctx.state["model_dir"]),
        data_dir=Path(ctx.state["preprocess_dir"]),
        output_dir=out,
        params=p,
        lora_target_modules=ctx.state["lora_target_modules"],
        max_seq_length=ctx.state["max_seq_length"],
        progress_file=progress_path(ctx.ws, ctx.job.name),
        mlflow_tracking_uri=ctx.ws.mlflow_tracking_uri,
        mlflow_run_id=ctx.run_id,
    )
    cfg_file = job_dir(ctx.ws, ctx.job.name) / "finetune_config.json"
    cfg_file.write_text(cfg.model_dump_json(indent=2))
    with file_lock(ctx.ws.lock_path(f"finetune-{key}")):
        code = _run_finetune_process(ctx, cfg_file)
    if code == EXIT_CANCELLED:
        raise Cancelled()
    if code != 0 or not (out / SUCCESS).is_file():
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
    return {
        "finetune_dir": str(out),
        "finetune_key": key,
        "cached": False,
        **{f"final_{k}": v for k, v in metrics.items() if k in ("train_loss", "eval_loss")},
    }


def _launch_command(p: FinetuneParams, cfg_file: Path) -> list[str]:
    procs = max(p.number_of_gpu_to_use_finetuning, 1)
    if procs * p.num_nodes_finetune == 1:
        return [sys.executable, "-m", "chattune.train.finetune", str(cfg_file)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
    if p.num_nodes_finetune > 1:
        endpoint = os.environ.get("CHATTUNE_RDZV_ENDPOINT")
        if not endpoint:
            raise StepFailed(
                f"num_nodes_finetune={p.num_nodes_finetune} needs a rendezvous point shared by "
                "the nodes.",
                fix="set CHATTUNE_RDZV_ENDPOINT=host:port and run the job on every node, or "
                "set num_nodes_finetune to 1.",
            )
        cmd += [
            f"--nnodes={p.num_nodes_finetune}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
        ]
    else:
        cmd += ["--standalone"]
    return [*cmd, "-m", "chattune.train.finetune", str(cfg_file)]


def _run_finetune_process(ctx: StepContext, cfg_file: Path) -> int:
    cmd = _launch_command(ctx.params, cfg_file)
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


def evaluate(ctx: StepContext) -> dict[str, Any]:
    from chattune.evaluate.step import EvaluateConfig, run_evaluate

    p = ctx.params
    key = ctx.key(
        model=ctx.state["finetune_key"],
        n=p.eval_sample_size,
        tokens=p.eval_max_new_tokens,
        prompt=ctx.state["max_seq_length"],
    )
    out = step_dir(ctx.ws, "evaluate", key)
    metrics_file = out / "metrics.json"
    cached = metrics_file.is_file()
    if cached:
        ctx.log(f"reusing evaluation from {out}")
        metrics = json.loads(metrics_file.read_text())
    else:
        tuned, adapter = _trained(ctx)
        data = Path(ctx.state["preprocess_dir"])
        metrics = run_evaluate(
            EvaluateConfig(
                model_dir=tuned,
                adapter_dir=adapter,
                test_tokenized=data / "test.parquet",
                test_messages=data / "test_messages.jsonl",
                sample_size=p.eval_sample_size,
                max_new_tokens=p.eval_max_new_tokens,
                # the context trained on, less the reply: as long as training ever saw
                max_prompt_tokens=max(ctx.state["max_seq_length"] - p.eval_max_new_tokens, 16),
                batch_size=max(p.per_device_eval_batch_size, 8),
                precision=p.precision,
                output_dir=out,
                seed=p.seed,
            ),
            ctx.log,
        )
    ctx.log("evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if ctx.run_id:
        tracking.log_metrics(ctx.ws, ctx.run_id, {f"test_{k}": v for k, v in metrics.items()})
    return {"evaluate_dir": str(out), "metrics": metrics, "cached": cached}


def _trained(ctx: StepContext) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) of the finetune output."""
    model = Path(ctx.state["finetune_dir"]) / "model"
    if (model / "adapter_config.json").is_file():
        return Path(ctx.state["model_dir"]), model
    return model, None


def convert(ctx: StepContext) -> dict[str, Any]:
    from chattune.train.convert import ConvertConfig, run_convert

    p = ctx.params
    key = ctx.key(model=ctx.state["finetune_key"], merge=p.merge_lora_weights)
    out = step_dir(ctx.ws, "convert", key)
    done = out / "_SUCCESS"
    cached = done.is_file()
    if cached:
        ctx.log(f"reusing converted model from {out}")
    else:
        tuned, adapter = _trained(ctx)
        run_convert(
            ConvertConfig(
                model_dir=tuned,
                adapter_dir=adapter,
                merge_lora_weights=p.merge_lora_weights,
                pytorch_model_folder=out / "pytorch_model_folder",
                mlflow_model_folder=out / "mlflow_model_folder",
                metadata={
                    "base_model": f"{ctx.state['model_name']}:{ctx.state['model_version']}",
                    "job": ctx.job.name,
                },
            ),
            ctx.log,
        )
        done.write_text("")
    outputs = {
        "pytorch_model_folder": str(out / "pytorch_model_folder"),
        "mlflow_model_folder": str(out / "mlflow_model_folder"),
    }
    links = job_dir(ctx.ws, ctx.job.name) / "outputs"
    links.mkdir(parents=True, exist_ok=True)
    for name, target in outputs.items():
        link = links / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return {"outputs": outputs, "cached": cached}


STEP_FUNCS: dict[str, Callable[[StepContext], dict[str, Any]]] = {
    "validation": validation,
    "model_import": model_import,
    "preprocess": preprocess,
    "finetune": finetune,
    "evaluate": evaluate,
    "convert": convert,
}
