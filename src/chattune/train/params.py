"""The parameters of the `chat_completion_pipeline`, as Azure ML's component has them.

One pydantic model holds them all; the CLI (`--set key=value`), job YAML files and the SDK
fill the same object. True/false flags accept the component's strings `"true"`/`"false"`
as well as real booleans; numbers accept strings ("5e-06"). Unknown or out-of-range
parameters are all reported at once, each by name, before any work starts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chattune.errors import InvalidParameter
from chattune.workspace.manifest import has_manifest, manifest_problem

Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


class FinetuneParams(BaseModel):
    """Every parameter of the pipeline with Azure's default (chattune's additions marked)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- training ------------------------------------------------------------------------
    num_train_epochs: float = Field(
        1, gt=0, description="Passes over the training data (fractions allowed)."
    )
    max_steps: int = Field(
        -1, ge=-1, description="Optimizer steps to train; overrides the epochs. -1 = from epochs."
    )
    per_device_train_batch_size: int = Field(
        1,
        ge=1,
        description="Conversations per device per step (with packing: per_device_train_batch_size"
        " x max_seq_length tokens per step).",
    )
    per_device_eval_batch_size: int = Field(
        1, ge=1, description="Conversations per device per evaluation batch."
    )
    learning_rate: float = Field(
        2e-5, gt=0, le=1, description="Peak learning rate of the optimizer (after warm-up)."
    )
    lr_scheduler_type: Scheduler = Field(
        "linear", description="How the learning rate changes over the steps after warm-up."
    )
    warmup_steps: int = Field(
        0, ge=0, description="Steps over which the learning rate rises from 0 to learning_rate."
    )
    weight_decay: float = Field(
        0.0, ge=0, description="Decoupled weight decay of AdamW (0 = none)."
    )
    optim: Literal["adamw_torch", "adafactor"] = Field(
        "adamw_torch", description="Optimizer; adafactor keeps less state (memory) than AdamW."
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Batches whose gradients add up before one optimizer step (a larger "
        "effective batch in the same memory).",
    )
    precision: Literal["32", "16", "bf16"] = Field(
        "32", description='"32" fp32; "16" fp16 on GPUs (bf16 on CPUs); "bf16" bfloat16.'
    )
    seed: int = Field(42, description="Seed of weights init, data order, splits and sampling.")
    max_grad_norm: float = Field(
        1.0, ge=0, description="Gradient clipping: the norm gradients are scaled down to."
    )
    max_seq_length: int = Field(
        -1,
        description="Tokens per conversation; longer ones are truncated. -1 = model context.",
    )
    auto_find_batch_size: bool = Field(
        False,
        description="On out-of-memory, halve the batch size and retry instead of failing.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="chattune: recompute activations in the backward pass (less memory, "
        "about a third more compute).",
    )
    packing: bool = Field(
        True,
        description="chattune: pack conversations into rows without padding; attention does "
        "not cross conversations.",
    )
    packed_attention: bool = Field(
        True,
        description="chattune, with packing: attention per packed conversation (no T x T mask;"
        " bench/README.md, T1).",
    )
    supervised_logits: bool = Field(
        True,
        description="chattune, with packing: vocabulary projection and cross-entropy only on "
        "tokens with a label (assistant turns).",
    )

    # -- evaluation and checkpoints --------------------------------------------------------
    evaluation_strategy: Literal["epoch", "steps", "disable"] = Field(
        "epoch",
        description="When eval_loss is measured on the validation split: every epoch, every "
        "eval_steps steps, or never.",
    )
    eval_steps: int = Field(
        500, ge=1, description="Steps between evaluations (evaluation_strategy steps)."
    )
    logging_steps: int = Field(
        10, ge=1, description="Steps between logged train_loss / learning_rate points."
    )
    save_total_limit: int = Field(
        -1, ge=-1, description="Checkpoints kept (oldest removed first); -1 = all."
    )
    save_steps: int = Field(
        100, ge=1, description="chattune: steps between checkpoints (what a resumed job keeps)."
    )
    resume_from_checkpoint: bool | Path = Field(
        False,
        description="Where finetune starts: false = from the base model; true = from the newest "
        "checkpoint in the finetune output of this job (or an earlier job with the same inputs),"
        " if any; a path = from that checkpoint-N folder (trainer_state.json and weights).",
    )
    apply_early_stopping: bool = Field(
        False,
        description="Stop when eval_loss has not improved for early_stopping_patience "
        "evaluations; keeps the best checkpoint.",
    )
    early_stopping_patience: int = Field(
        1, ge=1, description="Evaluations without improvement before early stopping stops."
    )
    eval_sample_size: int = Field(
        50, ge=0, description="chattune: test replies generated for BLEU/ROUGE (0 = none)."
    )
    eval_max_new_tokens: int = Field(
        64, ge=1, description="chattune: tokens generated per reply when evaluating."
    )

    # -- LoRA -------------------------------------------------------------------------------
    apply_lora: bool = Field(
        False,
        description="Train a LoRA adapter on the frozen model instead of every weight.",
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank: the inner size of each adapter.")
    lora_alpha: int = Field(
        128, ge=1, description="LoRA scaling: the adapter's update is scaled by alpha / r."
    )
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout on the adapter's input during training."
    )
    merge_lora_weights: bool = Field(
        True,
        description="Merge the adapter into the base weights in the output model folders "
        "(false: base model plus adapter/).",
    )

    # -- scale --------------------------------------------------------------------------------
    apply_deepspeed: bool = Field(
        False,
        description="Train under DeepSpeed ZeRO (CUDA and the deepspeed package needed; "
        "ignored otherwise, with a note).",
    )
    deepspeed_stage: Literal["2", "3"] = Field(
        "2",
        description="ZeRO stage: 2 shards optimizer state and gradients, 3 also the weights.",
    )
    deepspeed: str | None = Field(None, description="A DeepSpeed config file; overrides stage.")
    num_nodes_finetune: int = Field(
        1,
        ge=1,
        description="Machines training together (torchrun; set CHATTUNE_RDZV_ENDPOINT).",
    )
    number_of_gpu_to_use_finetuning: int = Field(
        1, ge=0, description="Processes per node (one per GPU); 0 or 1 = one process."
    )

    @field_validator("resume_from_checkpoint", mode="before")
    @classmethod
    def _flag_or_folder(cls, v: Any) -> Any:
        # the component's "true"/"false" strings are flags; any other text is a folder
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            return v.strip().lower() == "true"
        if isinstance(v, str | Path) and not isinstance(v, bool):
            if not str(v).strip():
                return False
            return str(Path(v).expanduser().resolve())  # text: JSON input takes no Path
        return v

    @field_validator("deepspeed_stage", "precision", mode="before")
    @classmethod
    def _int_to_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("deepspeed", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v in ("", "none", "None") else v

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneParams:
        problems = []
        if self.apply_early_stopping and self.evaluation_strategy == "disable":
            problems.append(
                "`apply_early_stopping` needs evaluation: set `evaluation_strategy` to "
                "epoch or steps, or `apply_early_stopping` to false"
            )
        if self.max_seq_length == 0 or self.max_seq_length < -1:
            problems.append("`max_seq_length` must be a positive number of tokens, or -1")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_component_dict(self) -> dict[str, str]:
        """The parameters as the component takes them: strings, flags as "true"/"false"."""
        return {k: _component_value(v) for k, v in self.model_dump().items() if v is not None}


RESUME_FIX = (
    "set `resume_from_checkpoint` to a `checkpoint-N` folder of a finetune output "
    "(<workspace>/cache/finetune/<key>/checkpoints/checkpoint-N, holding trainer_state.json), "
    "to true (this job's newest intact checkpoint) or to false (start fresh)."
)
_FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def resume_checkpoint_problem(path: Path, apply_lora: bool) -> str | None:
    """Why finetune cannot resume from the folder `path`, or None if it can.

    A folder transformers' Trainer saved holds `trainer_state.json` (step, schedule) and the
    weights it trains: an adapter for a LoRA job, the whole model otherwise (a DeepSpeed
    checkpoint keeps them in `global_step*/`). The sizes of the files chattune recorded when
    it saved the folder are compared too (a `stat` each); the finetune step also compares
    their hashes (`chattune.train.checkpoints.checkpoint_damage`).
    """
    field = f"`resume_from_checkpoint` {str(path)!r}"
    if not path.exists():
        return f"{field} does not exist"
    if not path.is_dir():
        return f"{field} is a file, not a checkpoint folder"
    if not (path / "trainer_state.json").is_file():
        return f"{field} is not a transformers checkpoint folder (no trainer_state.json)"
    adapter = any((path / n).is_file() for n in _ADAPTER_WEIGHTS)
    full = any((path / n).is_file() for n in _FULL_WEIGHTS) or any(path.glob("global_step*"))
    if apply_lora and not adapter:
        return f"{field} holds no LoRA adapter, but this job trains one (`apply_lora` true)"
    if not apply_lora and not full:
        what = "a LoRA adapter" if adapter else "no model weights"
        return f"{field} holds {what}, but this job trains the full model (`apply_lora` false)"
    if has_manifest(path) and (damage := manifest_problem(path, hashes=False)):
        return f"{field} is damaged: {damage}"
    return None


@dataclass(frozen=True)
class ParamDoc:
    """One pipeline parameter as `chattune job params` lists it."""

    name: str
    type: str
    default: str
    description: str


def param_docs() -> list[ParamDoc]:
    """Every `FinetuneParams` field: name, type, default (as the component writes it) and
    meaning, in the model's order."""
    return [
        ParamDoc(
            name=name,
            type=_type_name(f.annotation),
            default=_component_value(f.default),
            description=f.description or "",
        )
        for name, f in FinetuneParams.model_fields.items()
    ]


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    names = {bool: "true | false", Path: "path", type(None): "none"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _component_value(v: Any) -> str:
    """A value as the component takes it: flags "true"/"false", None as "none"."""
    if v is None:
        return "none"
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _describe(err: dict[str, Any]) -> str:
    if not err["loc"]:  # a rule across parameters: the message names them
        return str(err["msg"]).removeprefix("Value error, ")
    name = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name, FinetuneParams.model_fields, n=1)
        return f"unknown parameter `{name}`" + (f" (did you mean `{close[0]}`?)" if close else "")
    return f"`{name}` = {err.get('input')!r}: {err['msg']}"


def parse_params(
    values: dict[str, Any], model_defaults: dict[str, Any] | None = None
) -> FinetuneParams:
    """Validate user parameters, then apply the model's `model_specific_defaults` on top.

    As in the seed, a model's specific defaults override what the user set.

    Raises:
        InvalidParameter: every problem at once, each naming its parameter.
    """
    merged = {**values, **(model_defaults or {})}
    try:
        return FinetuneParams.model_validate(merged)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        known = ", ".join(FinetuneParams.model_fields)
        raise InvalidParameter(
            f"{len(problems)} invalid pipeline parameter(s): " + "; ".join(problems) + ".",
            fix=f"correct the values named above; known parameters: {known}.",
        ) from None
