"""The convert step: the fine-tuned model as a plain PyTorch folder and an MLflow model folder.

Two outputs, as Azure's `chat_completion_pipeline` has them:

- `pytorch_model_folder`, a Hugging Face folder (safetensors weights, config, generation
  config, tokenizer with its chat template):
  - no adapter: the model of `model_dir`, saved again;
  - adapter and `merge_lora_weights` (the default): base + adapter merged
    (`merge_and_unload()`), so it loads with `AutoModelForCausalLM` alone;
  - adapter and not `merge_lora_weights`: the base model at the top of the folder and the
    PEFT adapter, untouched, in `adapter/`; load it with
    `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), folder / "adapter")`.
- `mlflow_model_folder`, an MLflow model with the `transformers` flavor (and `python_function`),
  always holding the merged weights, whatever `merge_lora_weights` says. MLflow can keep a
  PEFT adapter apart only by naming its base model as a hub repository or an absolute local
  path (`base_model_path`), which a registered model must not depend on: the folder is moved
  into the registry and served on other machines. Merging costs nothing in quality (same
  outputs) and the server then needs no `peft`.

The MLflow task is `llm/v1/chat`: MLflow's chat inference task on top of a text-generation
pipeline. Its `python_function` flavor takes an OpenAI-style chat request (`{"messages": [...],
"max_tokens": ..., "temperature": ...}`), applies the tokenizer's chat template itself, and
answers with a `chat.completion` object; with plain `text-generation`, pyfunc takes prompt
strings only, so a chat request would have to be templated by every caller.
`mlflow.transformers.load_model(folder)` gives a `TextGenerationPipeline` in both cases.

Both folders are written to staging folders beside their destinations and renamed into place
at the end, so a failed run leaves the previous outputs (or none) and never a half-written one.

Example:
    >>> run_convert(ConvertConfig(model_dir=Path("base"), adapter_dir=Path("lora"),
    ...     pytorch_model_folder=Path("out/pytorch"), mlflow_model_folder=Path("out/mlflow"),
    ...     metadata={"base_model_name": "SmolLM2-135M-Instruct"}), print)  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from chattune.errors import InvalidParameter
from chattune.models.checkpoint import ADAPTER_SUBDIR, checkpoint
from chattune.models.loading import load_base, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Log = Callable[[str], None]
MLFLOW_TASK = "llm/v1/chat"


class ConvertConfig(BaseModel):
    """Everything the convert step reads and writes."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(description="A full model folder (HF format), or the LoRA base.")
    adapter_dir: Path | None = Field(None, description="A PEFT LoRA adapter on `model_dir`.")
    merge_lora_weights: bool = Field(
        True, description="Merge the adapter into the weights of `pytorch_model_folder`."
    )
    pytorch_model_folder: Path = Field(description="Gets the Hugging Face model folder.")
    mlflow_model_folder: Path = Field(description="Gets the MLflow model folder.")
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Put in the MLmodel file's `metadata` (base model name, job name, ...).",
    )


@dataclass(frozen=True)
class ConvertResult:
    """Where the convert step wrote its outputs.

    Attributes:
        pytorch_model_folder: the Hugging Face folder.
        mlflow_model_folder: the MLflow model folder (merged weights).
        adapter_folder: `pytorch_model_folder / "adapter"` when the adapter was kept apart,
            else None.
    """

    pytorch_model_folder: Path
    mlflow_model_folder: Path
    adapter_folder: Path | None


def run_convert(cfg: ConvertConfig, log: Log = lambda _msg: None) -> ConvertResult:
    """Write the PyTorch and MLflow model folders of a fine-tuned model.

    Args:
        cfg: the model (and adapter) to convert and where to write.
        log: called with a line of progress at each stage.

    Returns:
        The folders written.

    Raises:
        InvalidParameter: a path in `cfg` is missing or the outputs overlap the inputs, or
            the tokenizer has no chat template.
    """
    _check_paths(cfg)
    tokenizer = load_tokenizer(checkpoint(cfg.model_dir, cfg.adapter_dir))
    pytorch_final = cfg.pytorch_model_folder.resolve()
    adapter = cfg.adapter_dir
    keep_adapter = adapter is not None and not cfg.merge_lora_weights

    with _staging(pytorch_final) as pt_stage, _staging(cfg.mlflow_model_folder) as ml_stage:
        log(f"loading {cfg.model_dir}")
        model = _load(cfg.model_dir)
        if adapter is not None and keep_adapter:
            log(f"writing the base model and the adapter apart into {pytorch_final}")
            model.save_pretrained(pt_stage)  # before merging, which changes the base in place
            shutil.copytree(adapter, pt_stage / ADAPTER_SUBDIR)
        if adapter is not None:
            log(f"merging the LoRA adapter {adapter}")
            model = _merge(model, adapter)
        if not keep_adapter:
            log(f"writing {pytorch_final}")
            model.save_pretrained(pt_stage)
        tokenizer.save_pretrained(pt_stage)

        log(f"writing the MLflow model ({MLFLOW_TASK}) {cfg.mlflow_model_folder}")
        # MLflow records the model's name_or_path as its source (and chat answers carry it as
        # "model"); an absolute path is never taken for a hub repository to look up.
        model.name_or_path = str(pytorch_final)
        _save_mlflow(model, tokenizer, ml_stage, cfg.metadata)

    log("done")
    return ConvertResult(
        pytorch_model_folder=cfg.pytorch_model_folder,
        mlflow_model_folder=cfg.mlflow_model_folder,
        adapter_folder=cfg.pytorch_model_folder / ADAPTER_SUBDIR if keep_adapter else None,
    )


def _check_paths(cfg: ConvertConfig) -> None:
    """Report every problem with the paths at once, each by its field."""
    problems = []
    if not (cfg.model_dir / "config.json").is_file():
        problems.append(f"`model_dir` {cfg.model_dir} has no config.json")
    if cfg.adapter_dir is not None and not (cfg.adapter_dir / "adapter_config.json").is_file():
        problems.append(f"`adapter_dir` {cfg.adapter_dir} has no adapter_config.json")
    outs = {
        "pytorch_model_folder": cfg.pytorch_model_folder,
        "mlflow_model_folder": cfg.mlflow_model_folder,
    }
    ins = {"model_dir": cfg.model_dir, "adapter_dir": cfg.adapter_dir}
    for out_name, out in outs.items():
        for in_name, src in ins.items():
            if src is not None and _overlap(out, src):
                problems.append(f"`{out_name}` {out} overlaps `{in_name}` {src}")
    if _overlap(cfg.pytorch_model_folder, cfg.mlflow_model_folder):
        problems.append("`pytorch_model_folder` and `mlflow_model_folder` overlap")
    if problems:
        raise InvalidParameter(
            "cannot convert: " + "; ".join(problems) + ".",
            fix="point `model_dir`/`adapter_dir` at the finetune step's outputs and the two "
            "output folders at separate new folders.",
        )


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A fresh folder beside `final`, renamed to `final` if the block succeeds, else removed.

    An existing `final` is swapped out (renamed aside, then deleted) rather than deleted
    first, so it is lost only once its replacement is complete.
    """
    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = final.with_name(f".{final.name}.staging")
    shutil.rmtree(stage, ignore_errors=True)  # left by a run that was killed
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _load(model_dir: Path) -> PreTrainedModel:
    # dtype="auto": keep the checkpoint's own dtype (bf16 stays bf16 in both outputs)
    return load_base(model_dir, dtype="auto").eval()


def _merge(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """The base weights with the LoRA deltas added in (W + B @ A * alpha / r)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def _save_mlflow(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    metadata: dict[str, str],
) -> None:
    import mlflow.transformers
    from huggingface_hub import ModelCard

    card = ModelCard(
        "---\nlibrary_name: transformers\ntags:\n- chattune\n---\n"
        "# Chat model fine-tuned with chattune\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in sorted(metadata.items()))
    )
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(path),
        task=MLFLOW_TASK,
        metadata=dict(metadata),
        # Given, not inferred: inference would load the model again in a subprocess, and
        # MLflow's default list asks for torchvision, which a text model does not need.
        pip_requirements=_requirements(),
        # Given, so that MLflow does not ask the hub for a card and a license.
        model_card=card,
    )


def _requirements() -> list[str]:
    out = []
    for name in ("transformers", "torch", "accelerate", "safetensors", "tokenizers"):
        try:
            version = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
        out.append(f"{name}=={version.split('+')[0]}")  # torch 2.x+cpu: no local label on PyPI
    return out
