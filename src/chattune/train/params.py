"""The parameters of the `chat_completion_pipeline`, as Azure ML's component has them.

One pydantic model holds them all; the CLI (`--set key=value`), job YAML files and the SDK
fill the same object. True/false flags accept the component's strings `"true"`/`"false"`
as well as real booleans; numbers accept strings ("5e-06"). Unknown or out-of-range
parameters are all reported at once, each by name, before any work starts.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chattune.errors import InvalidParameter

Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


class FinetuneParams(BaseModel):
    """Every parameter of the pipeline with Azure's default (chattune's additions marked)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- training ------------------------------------------------------------------------
    num_train_epochs: float = Field(1, gt=0, description="Passes over the training data.")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; -1 = from the epochs.")
    per_device_train_batch_size: int = Field(1, ge=1)
    per_device_eval_batch_size: int = Field(1, ge=1)
    learning_rate: float = Field(2e-5, gt=0, le=1)
    lr_scheduler_type: Scheduler = "linear"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    optim: Literal["adamw_torch", "adafactor"] = "adamw_torch"
    gradient_accumulation_steps: int = Field(1, ge=1)
    precision: Literal["32", "16", "bf16"] = Field(
        "32", description='"32" fp32; "16" fp16 on GPUs (bf16 on CPUs); "bf16" bfloat16.'
    )
    seed: int = 42
    max_grad_norm: float = Field(1.0, ge=0)
    max_seq_length: int = Field(-1, description="Tokens per conversation; -1 = model context.")
    auto_find_batch_size: bool = False
    gradient_checkpointing: bool = False  # chattune: trade compute for activation memory
    packing: bool = True  # chattune: padding-free packing of conversations
    # chattune, with packing: attention per packed conversation (no T x T mask), and the
    # vocabulary projection + cross-entropy only where a label is (bench/README.md, T1)
    packed_attention: bool = True
    supervised_logits: bool = True

    # -- evaluation and checkpoints --------------------------------------------------------
    evaluation_strategy: Literal["epoch", "steps", "disable"] = "epoch"
    eval_steps: int = Field(500, ge=1)
    logging_steps: int = Field(10, ge=1)
    save_total_limit: int = Field(-1, ge=-1, description="Checkpoints kept; -1 = all.")
    save_steps: int = Field(100, ge=1)  # chattune: checkpoint period, for resuming killed jobs
    resume_from_checkpoint: bool = False
    apply_early_stopping: bool = False
    early_stopping_patience: int = Field(1, ge=1)
    eval_sample_size: int = Field(50, ge=0)  # chattune: test conversations generated for BLEU/ROUGE
    eval_max_new_tokens: int = Field(64, ge=1)  # chattune: generation length when evaluating

    # -- LoRA -------------------------------------------------------------------------------
    apply_lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(128, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    merge_lora_weights: bool = True

    # -- scale --------------------------------------------------------------------------------
    apply_deepspeed: bool = False
    deepspeed_stage: Literal["2", "3"] = "2"
    deepspeed: str | None = Field(None, description="A DeepSpeed config file; overrides stage.")
    num_nodes_finetune: int = Field(1, ge=1)
    number_of_gpu_to_use_finetuning: int = Field(
        1, ge=0, description="Processes per node (one per GPU); 0 or 1 = one process."
    )

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
        out: dict[str, str] = {}
        for k, v in self.model_dump().items():
            if v is None:
                continue
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out


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
