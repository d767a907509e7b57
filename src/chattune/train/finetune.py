"""The finetune step: LoRA or full fine-tuning with transformers' Trainer and PEFT.

Run in its own process (`python -m chattune.train.finetune CONFIG.json`), or one process
per device under torchrun when `number_of_gpu_to_use_finetuning` x `num_nodes_finetune`
is more than 1 (gloo on CPUs, NCCL on GPUs).

Data comes tokenized from the preprocess step (`train.parquet`, `validation.parquet`:
`input_ids`, `labels` with -100 off the assistant turns). With `packing` (the default),
conversations are packed without padding: a batch is one row of up to
`per_device_train_batch_size x max_seq_length` tokens, position ids restart per
conversation and attention does not cross conversations (`chattune.train.packing`).

Nothing is lost: a checkpoint is written every `save_steps`; once it is fully on disk, the
size and sha256 of its files are recorded and it is marked done (`chattune.train.checkpoints`).
Where a run starts follows `resume_from_checkpoint` (`checkpoint_to_resume`); a restarted run
of the same job always continues from its own newest intact checkpoint, skipping (and
naming) any newer one that is damaged. SIGTERM saves a checkpoint and stops (exit code 143).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from chattune.models.loading import compute_dtype, load_base, load_tokenizer
from chattune.train.checkpoints import checkpoint_to_resume, finish_checkpoint
from chattune.train.params import FinetuneParams
from chattune.workspace.files import write_json_atomic
from chattune.workspace.markers import mark_done

EXIT_CANCELLED = 143


class FinetuneConfig(BaseModel):
    """Inputs of the finetune step."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path  # imported base model (safetensors + tokenizer)
    data_dir: Path  # output of the preprocess step
    output_dir: Path  # checkpoints/, model/, metrics.json
    params: FinetuneParams
    lora_target_modules: list[str]
    max_seq_length: int  # resolved by preprocess (-1 replaced by the model's context)
    # this job ran finetune before (`chattune job resume`): its own checkpoints come first
    restarted: bool = False
    progress_file: Path | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _log(msg: str) -> None:
    if rank() == 0:
        print(msg, flush=True)


def _wait_for_all_ranks() -> None:
    """A barrier when several processes train: the Trainer calls `on_save` on each rank
    without one, and rank 0 must not record a checkpoint another rank is still writing."""
    import torch.distributed as dist  # torch loads with the step, as everywhere in this module

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _precision(params: FinetuneParams, cuda: bool) -> tuple[bool, bool]:
    """(bf16, fp16) flags for the Trainer.

    The dtype is `models.loading.compute_dtype`'s: on CPUs, fp16 becomes bf16 where the CPU
    runs bf16 in hardware (AMX, AVX512-BF16), and both become fp32 where it does not
    (emulated bf16 is hundreds of times slower); on GPUs without bf16 (before Ampere), bf16
    becomes fp16. The log says when the asked precision is not the one trained in.
    """
    import torch

    dtype = compute_dtype(params.precision, torch.device("cuda" if cuda else "cpu"))
    asked = params.precision
    if asked != "32" and dtype is torch.float32:
        _log(
            f"warning: precision {asked} asked, but this CPU has no bf16 "
            "instructions (AMX/AVX512-BF16); training in fp32 instead"
        )
    elif asked == "16" and dtype is torch.bfloat16:
        warnings.warn("precision 16 (fp16) on CPU runs as bf16", stacklevel=2)
        _log("warning: precision 16 (fp16) is not supported on CPU; training in bf16 instead")
    elif asked == "bf16" and dtype is torch.float16:  # the Trainer would refuse bf16 there
        _log("warning: precision bf16 asked, but this GPU has no bf16; training in fp16 instead")
    return dtype is torch.bfloat16, dtype is torch.float16


def _deepspeed_config(cfg: FinetuneConfig, cuda: bool) -> str | None:
    p = cfg.params
    if not p.apply_deepspeed:
        return None
    if not cuda:
        _log("note: apply_deepspeed is set but there is no CUDA device; running without DeepSpeed")
        return None
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        _log(
            "note: apply_deepspeed is set but deepspeed is not installed; running without it "
            "(pip install deepspeed)"
        )
        return None
    if p.deepspeed:
        return p.deepspeed
    path = cfg.output_dir / f"deepspeed_zero{p.deepspeed_stage}.json"
    ds = {
        "zero_optimization": {
            "stage": int(p.deepspeed_stage),
            "overlap_comm": True,
            "contiguous_gradients": True,
            **(
                {"stage3_gather_16bit_weights_on_model_save": True}
                if p.deepspeed_stage == "3"
                else {}
            ),
        },
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }
    # every process writes the same file, each atomically: none reads it half-written
    write_json_atomic(path, ds)
    return str(path)


class _PackedDataset:
    """Bins of conversations; item i is the list of examples packed into batch i."""

    def __init__(self, rows: _Rows, bins: list[list[int]]) -> None:
        self.rows, self.bins = rows, bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> list[dict[str, list[int]]]:
        return [self.rows[j] for j in self.bins[i]]


class _Rows:
    """The tokenized rows of a split, kept as arrow columns: 4 bytes a token, where Python
    lists of ints take about 36 (200k conversations: 0.5 GB instead of 4). Row i becomes
    `{"input_ids": [...], "labels": [...]}` when a batch asks for it."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["input_ids", "labels"])
        self._ids = table.column("input_ids").combine_chunks()
        self._labels = table.column("labels").combine_chunks()

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self._ids[i].as_py(), "labels": self._labels[i].as_py()}

    def lengths(self) -> list[int]:
        """Tokens per row, without making the rows."""
        import pyarrow.compute as pc

        return pc.list_value_length(self._ids).to_pylist()


def _load_rows(path: Path) -> _Rows:
    return _Rows(path)


def _datasets(cfg: FinetuneConfig):
    from chattune.train.packing import PackedCollator, PaddedCollator, pack_batches

    p = cfg.params
    train = _load_rows(cfg.data_dir / "train.parquet")
    val_path = cfg.data_dir / "validation.parquet"
    val = _load_rows(val_path) if val_path.is_file() else []
    if not p.packing:
        return train, val, PaddedCollator(pad_token_id=0), p.per_device_train_batch_size

    def packed(rows: _Rows, batch: int) -> _PackedDataset:
        return _PackedDataset(
            rows, pack_batches(rows.lengths(), batch * cfg.max_seq_length, p.seed)
        )

    collator = _FlattenBins(
        PackedCollator(
            flash_attn_kwargs=p.packed_attention or _flash_attention(),
            supervised_logits=p.supervised_logits,
        )
    )
    return (
        packed(train, p.per_device_train_batch_size),
        packed(val, p.per_device_eval_batch_size) if val else [],
        collator,
        1,  # one bin per step and device: the bin already holds the batch
    )


def _flash_attention() -> bool:
    """flash-attn's varlen kernels on CUDA take packed rows natively."""
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def _attn_implementation(p: FinetuneParams) -> str | None:
    """The attention for training: packed rows need per-conversation attention."""
    if not p.packing:
        return None  # transformers' default (sdpa) with the padding mask
    if _flash_attention():
        return "flash_attention_2"
    if p.packed_attention:
        from chattune.kernels.attention import register

        return register()
    return None  # sdpa with a block-diagonal mask built from position_ids


class _FlattenBins:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, batch: list[list[dict[str, list[int]]]]) -> dict[str, Any]:
        return self.inner([ex for bin_ in batch for ex in bin_])


def _callbacks(cfg: FinetuneConfig):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Progress file, log lines, MLflow metrics, checkpoint markers, SIGTERM."""

        def __init__(self) -> None:
            self.stop_requested = False
            self.t0 = time.monotonic()
            self.last = (self.t0, 0)
            self.last_loss: float | None = None
            self.client = None
            if cfg.mlflow_run_id and rank() == 0:
                import mlflow

                self.client = mlflow.MlflowClient(cfg.mlflow_tracking_uri)
            signal.signal(signal.SIGTERM, self._on_sigterm)

        def _on_sigterm(self, *_: Any) -> None:
            _log("SIGTERM: saving a checkpoint, then stopping")
            self.stop_requested = True

        def on_step_end(self, args, state, control, **kw):
            if self.stop_requested:
                control.should_save = True
                control.should_training_stop = True
            self._progress(state, {})

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            if "loss" in logs:
                self.last_loss = float(logs["loss"])
            now = time.monotonic()
            tokens = state.num_input_tokens_seen or 0
            dt = now - self.last[0]
            if dt > 0 and tokens > self.last[1] and "loss" in logs:
                logs["tokens_per_second"] = (tokens - self.last[1]) / dt
                self.last = (now, tokens)
            # the Trainer's end-of-run summary says `train_loss` for the mean over this
            # process's steps; the series `train_loss` is the per-step loss
            names = {"loss": "train_loss", "train_loss": "train_loss_mean"}
            metrics = {
                names.get(k, k): float(v)
                for k, v in logs.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            if rank() == 0:
                shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                epoch = state.epoch or 0
                _log(f"step {state.global_step}/{state.max_steps} epoch {epoch:.2f} {shown}")
                if self.client is not None and metrics:
                    from mlflow.entities import Metric

                    ts = int(time.time() * 1000)
                    self.client.log_batch(
                        cfg.mlflow_run_id,
                        metrics=[
                            Metric(k, v, ts, state.global_step)
                            for k, v in metrics.items()
                            if math.isfinite(v)
                        ],
                    )
            self._progress(state, metrics)

        def on_save(self, args, state, control, **kw):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not self.stop_requested:  # SIGTERM may reach the ranks at different steps
                _wait_for_all_ranks()  # each rank writes its own files (RNG state, shards)
            if rank() == 0 and ckpt.is_dir():
                finish_checkpoint(ckpt, state.global_step)

        def _progress(self, state, metrics: dict[str, float]) -> None:
            if cfg.progress_file is None or rank() != 0:
                return
            data = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": state.epoch,
                "elapsed_s": time.monotonic() - self.t0,
                **metrics,
            }
            tmp = cfg.progress_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(cfg.progress_file)

    return Progress()


def run_finetune(cfg: FinetuneConfig) -> dict[str, float]:
    """Train, save the adapter (LoRA) or the full model to `output_dir/model`.

    Returns:
        Training metrics (train_loss, train_runtime, global_step, ...).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        EarlyStoppingCallback,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from chattune.host.malloc import tune_malloc
    from chattune.kernels.attention import attention_kernel

    attention_kernel()  # a bad CHATTUNE_ATTENTION_KERNEL fails here, not in the first step
    tune_malloc()  # freed activations reused, not faulted in afresh at every step
    p = cfg.params
    cuda = torch.cuda.is_available()
    set_seed(p.seed)
    bf16, fp16 = _precision(p, cuda)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = cfg.output_dir / "checkpoints"
    # before any loading: a bad path fails fast
    resume = checkpoint_to_resume(p, ckpt_dir, restarted=cfg.restarted, log=_log, main=rank() == 0)

    # LoRA freezes the base: keep it in the compute dtype (half the memory of fp32).
    # Full fine-tuning keeps fp32 master weights; autocast runs the matmuls in bf16/fp16.
    dtype = torch.float32
    if p.apply_lora and bf16:
        dtype = torch.bfloat16
    elif p.apply_lora and fp16:
        dtype = torch.float16
    attn = _attn_implementation(p)
    model = load_base(cfg.model_dir, dtype, attn)
    _log(f"attention: {model.config._attn_implementation}")
    _log(
        f"precision: {'bf16' if bf16 else 'fp16' if fp16 else 'fp32'} (asked {p.precision}; "
        f"weights {str(dtype).removeprefix('torch.')}{', autocast' if bf16 or fp16 else ''})"
    )
    if p.apply_lora:
        lora = LoraConfig(
            r=p.lora_r,
            lora_alpha=p.lora_alpha,
            lora_dropout=p.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if p.gradient_checkpointing:
            model.enable_input_require_grads()
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    total = sum(t.numel() for t in model.parameters())
    _log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")

    train, val, collator, device_batch = _datasets(cfg)
    evaluate = p.evaluation_strategy != "disable" and len(val) > 0
    if p.evaluation_strategy != "disable" and not val:
        _log("note: no validation rows; evaluation during training is off")
    eval_strategy = p.evaluation_strategy if evaluate else "no"
    save_strategy = "steps"
    save_steps = p.save_steps
    if p.apply_early_stopping and evaluate:
        # early stopping keeps the best checkpoint: saves must line up with evaluations
        save_strategy = eval_strategy
        save_steps = p.eval_steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=p.num_train_epochs,
        max_steps=p.max_steps,
        per_device_train_batch_size=device_batch,
        per_device_eval_batch_size=1 if p.packing else p.per_device_eval_batch_size,
        learning_rate=p.learning_rate,
        lr_scheduler_type=p.lr_scheduler_type,
        warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay,
        optim=p.optim,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        bf16=bf16,
        fp16=fp16,
        seed=p.seed,
        data_seed=p.seed,
        max_grad_norm=p.max_grad_norm,
        eval_strategy=eval_strategy,
        eval_steps=p.eval_steps,
        logging_steps=p.logging_steps,
        logging_first_step=True,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=None if p.save_total_limit == -1 else max(p.save_total_limit, 1),
        load_best_model_at_end=p.apply_early_stopping and evaluate,
        metric_for_best_model="eval_loss" if p.apply_early_stopping and evaluate else None,
        greater_is_better=False if p.apply_early_stopping and evaluate else None,
        activation_checkpointing=p.gradient_checkpointing,  # v5 name of gradient_checkpointing
        auto_find_batch_size=p.auto_find_batch_size,
        deepspeed=_deepspeed_config(cfg, cuda),
        use_cpu=not cuda,
        ddp_backend=("nccl" if cuda else "gloo") if world > 1 else None,
        report_to=[],
        remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation needs the loss, not every logit kept
        include_num_input_tokens_seen=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    callbacks = [_callbacks(cfg)]
    if p.apply_early_stopping and evaluate:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=p.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val if evaluate else None,
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our Progress callback prints the log lines
    if resume is not None:
        _log(f"resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    progress = callbacks[0]
    if progress.stop_requested:
        _log("stopped on SIGTERM; the last checkpoint is complete")
        sys.exit(EXIT_CANCELLED)

    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    # The Trainer's train_loss is the mean over this process's steps only (a resumed run
    # averages fewer steps); the job's train_loss is the last logged step loss instead.
    metrics["train_loss_mean"] = metrics.pop("train_loss", float("nan"))
    if progress.last_loss is not None:
        metrics["train_loss"] = progress.last_loss
    metrics["global_step"] = float(trainer.state.global_step)
    if evaluate:
        metrics.update(
            {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, int | float)}
        )
    if rank() == 0:
        out = cfg.output_dir / "model"
        staging = cfg.output_dir / "model.staging"
        shutil.rmtree(staging, ignore_errors=True)
        trainer.model.save_pretrained(staging, safe_serialization=True)
        if not p.apply_lora:
            load_tokenizer(cfg.model_dir, chat_template=False).save_pretrained(staging)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        (cfg.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        mark_done(cfg.output_dir)
    return metrics


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cfg = FinetuneConfig.model_validate_json(Path(argv[0]).read_text())
    run_finetune(cfg)


if __name__ == "__main__":
    main()
