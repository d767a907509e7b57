"""Find the weights, the adapter and the tokenizer of whatever folder a deployment names.

Four layouts are served:

- a Hugging Face model folder (`config.json`): weights and tokenizer in the folder;
- a chattune `pytorch_model_folder` (`config.json` and `adapter/adapter_config.json`): the base
  weights in the folder, the unmerged LoRA adapter in `adapter/`;
- an MLflow `transformers` model (`MLmodel`): weights in `model/` (the flavor's
  `model_binary`), tokenizer in `components/tokenizer/`;
- a bare PEFT adapter (`adapter_config.json`): weights in its `base_model_name_or_path`, which
  must be a local folder; the tokenizer in the adapter folder if saved there, else the base's.

`base_id` names the base weights: a hash of `config.json`, the weight files' names and sizes,
and the first and last MiB of each (not all their bytes: reading 7 GB to name a model would
take a minute; two fine-tunes of one architecture differ in the sampled tensor data). The
supervisor starts one model server per `base_id` for LoRA-only deployments.

Example:
    >>> ckpt = resolve_checkpoint(Path("jobs/j1/outputs/pytorch_model_folder"))
    >>> ckpt.model_dir, ckpt.adapter_dir, ckpt.base_id  # doctest: +SKIP
    (PosixPath('.../pytorch_model_folder'), PosixPath('.../adapter'), '3f2a9c0d1e7b4a55')
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from chattune.errors import ChattuneError, InvalidParameter

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("chattune.serving")

ADAPTER_SUBDIR = "adapter"  # as `chattune.train.convert.ADAPTER_SUBDIR`
DEFAULT_ADAPTER = "default"  # the PEFT name of a checkpoint's own adapter
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_SAMPLE_BYTES = 1 << 20  # of each weight file's head and tail, in `base_id`


@dataclass(frozen=True)
class Checkpoint:
    """A servable model, resolved.

    Attributes:
        model_dir: a Hugging Face folder with the (base) weights and config.json.
        adapter_dir: a PEFT LoRA adapter to apply on `model_dir`, or None.
        base_id: 16 hex digits identifying the weights of `model_dir`.
        tokenizer_dir: where the tokenizer (and its chat template) is.
        kind: `hf`, `pytorch_model_folder`, `mlflow` or `peft_adapter`.
    """

    model_dir: Path
    adapter_dir: Path | None
    base_id: str
    tokenizer_dir: Path
    kind: str = "hf"


def resolve_checkpoint(path: Path) -> Checkpoint:
    """Say where the weights, adapter and tokenizer of `path` are.

    Args:
        path: a Hugging Face model folder, a chattune `pytorch_model_folder` (maybe with an
            unmerged adapter in `adapter/`), an MLflow `transformers` model folder, or a PEFT
            adapter folder whose `base_model_name_or_path` is a local folder.

    Returns:
        The resolved `Checkpoint`.

    Raises:
        ChattuneError: `path` is none of these (the message says what was looked for).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ChattuneError(
            f"model path {path} is not a folder.",
            fix="give the folder of a model: a Hugging Face folder (config.json), a job's "
            "pytorch_model_folder or mlflow_model_folder, or a PEFT adapter folder.",
        )
    if (path / "MLmodel").is_file():
        return _mlflow(path)
    if (path / "config.json").is_file():
        adapter = path / ADAPTER_SUBDIR
        if (adapter / "adapter_config.json").is_file():
            tok = adapter if (adapter / "tokenizer_config.json").is_file() else path
            return Checkpoint(path, adapter, base_id(path), tok, "pytorch_model_folder")
        return Checkpoint(path, None, base_id(path), path, "hf")
    if (path / "adapter_config.json").is_file():
        return _peft_adapter(path)
    raise ChattuneError(
        f"{path} holds no model: no config.json (Hugging Face model), no MLmodel (MLflow "
        f"model) and no adapter_config.json (PEFT adapter). It has: "
        f"{', '.join(sorted(p.name for p in path.iterdir())[:12]) or 'nothing'}.",
        fix="point at the model folder itself, e.g. a job's outputs/mlflow_model_folder.",
    )


def base_id(model_dir: Path) -> str:
    """16 hex digits over config.json's bytes and the weight files' names, sizes and first and
    last `_SAMPLE_BYTES`."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES):
            size = p.stat().st_size
            h.update(f"\0{p.name}\0{size}\0".encode())
            with p.open("rb") as f:
                h.update(f.read(_SAMPLE_BYTES))
                f.seek(max(0, size - _SAMPLE_BYTES))
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()[:16]


def _mlflow(path: Path) -> Checkpoint:
    try:
        spec = yaml.safe_load((path / "MLmodel").read_text()) or {}
    except yaml.YAMLError as exc:
        raise ChattuneError(f"{path / 'MLmodel'} is not valid YAML: {exc}") from None
    flavor = (spec.get("flavors") or {}).get("transformers")
    if not flavor:
        raise ChattuneError(
            f"the MLflow model {path} has no `transformers` flavor "
            f"(flavors: {', '.join(spec.get('flavors') or {}) or 'none'}).",
            fix="serve an MLflow model saved with mlflow.transformers (a chattune job's "
            "mlflow_model_folder).",
        )
    model_dir = path / (flavor.get("model_binary") or "model")
    if not (model_dir / "config.json").is_file():
        raise ChattuneError(
            f"the MLflow model {path} has no weights in {model_dir.name}/ (no config.json); "
            "a model saved with save_pretrained=False points at the hub, which is not served.",
            fix="save the MLflow model with its weights (mlflow.transformers.save_model with "
            "save_pretrained=True, the default).",
        )
    tok = path / "components" / "tokenizer"
    if not (tok / "tokenizer_config.json").is_file():
        tok = model_dir
    return Checkpoint(model_dir, None, base_id(model_dir), tok, "mlflow")


def _peft_adapter(path: Path) -> Checkpoint:
    cfg = json.loads((path / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    base_dir = Path(base).expanduser() if base else None
    if base_dir is not None and not base_dir.is_absolute():
        base_dir = (path / base_dir).resolve()
    if base_dir is None or not (base_dir / "config.json").is_file():
        raise ChattuneError(
            f"the PEFT adapter {path} names its base model as {base!r}, which is not a local "
            "model folder (the hub is not used for serving).",
            fix=f"set base_model_name_or_path in {path / 'adapter_config.json'} to the base "
            "model's folder, or serve the job's pytorch_model_folder.",
        )
    tok = path if (path / "tokenizer_config.json").is_file() else base_dir
    return Checkpoint(base_dir.resolve(), path, base_id(base_dir), tok, "peft_adapter")


def load_tokenizer(ckpt: Checkpoint) -> PreTrainedTokenizerBase:
    """The tokenizer stored with the model, which must have a chat template.

    Raises:
        InvalidParameter: it has none.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ckpt.tokenizer_dir)
    if not tokenizer.chat_template:
        raise InvalidParameter(
            f"the tokenizer in {ckpt.tokenizer_dir} has no chat template: chat requests "
            "cannot be turned into prompts.",
            fix="import the base model with a chat template and fine-tune it again.",
        )
    return tokenizer


SERVING_DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ENV = "CHATTUNE_SERVING_DTYPE"  # the model server's --dtype default (instances inherit it)


def serving_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The weights' dtype of a model server.

    Args:
        device: where the model runs.
        requested: "auto" (bf16 on GPUs and on CPUs with bf16 instructions, else fp16 on GPUs
            and fp32 on CPUs: emulated bf16 is ~100x slower than fp32 on CPUs without them;
            measured 1.3x faster decode than fp32 on an AVX512-BF16 CPU with packed weights,
            1.8-2.2x without, BENCHMARKS.md),
            or one of "float32", "bfloat16", "float16" as it is.

    Raises:
        InvalidParameter: `requested` is none of `SERVING_DTYPES`.
    """
    import torch

    from chattune.compute.machine import cpu_bf16_supported

    if requested not in SERVING_DTYPES:
        raise InvalidParameter(
            f"dtype {requested!r} is not one of {', '.join(SERVING_DTYPES)}",
            fix="pass --dtype auto (or set CHATTUNE_SERVING_DTYPE=auto)",
        )
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16_supported() else torch.float32


def load_model(
    ckpt: Checkpoint,
    adapters: Mapping[str, Path] | None = None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    prepack: bool = True,
) -> tuple[PreTrainedModel, list[str]]:
    """The model in eval mode, with every LoRA adapter loaded (not merged) for mixed batches.

    Args:
        ckpt: the checkpoint; its own adapter (if any) is loaded as `DEFAULT_ADAPTER`.
        adapters: more adapters by name; each path goes through `resolve_checkpoint` and must
            hold an adapter for the same base weights.
        device: where the model runs.
        dtype: its weights' dtype.
        prepack: on a CPU, pack the linear layers' weights once for oneDNN
            (`prepack.prepack_linears`: same results, faster decode); the model is then for
            inference only.

    Returns:
        The model (a `PeftModel` when there is any adapter) and the adapter names loaded.

    Raises:
        ChattuneError: an adapter is missing, is not a LoRA adapter, or is for another base.
    """
    from transformers import AutoModelForCausalLM

    named = _adapter_dirs(ckpt, adapters or {})
    model: Any = AutoModelForCausalLM.from_pretrained(ckpt.model_dir, dtype=dtype)
    if named:
        from peft import PeftModel

        first, *rest = named.items()
        model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0])
        for name, adapter_dir in rest:
            model.load_adapter(adapter_dir, adapter_name=name)
    model.to(device).eval()
    if prepack and device.type == "cpu":
        from chattune.kernels.prepack import prepack_linears

        prepack_linears(model)
    return model, list(named)


def _adapter_dirs(ckpt: Checkpoint, adapters: Mapping[str, Path]) -> dict[str, Path]:
    named: dict[str, Path] = {}
    if ckpt.adapter_dir is not None:
        named[DEFAULT_ADAPTER] = ckpt.adapter_dir
    for name, path in adapters.items():
        if name in named or name == BASE_ADAPTER:
            raise InvalidParameter(
                f"adapter name {name!r} is taken"
                + (" by the model's own adapter." if name == DEFAULT_ADAPTER else "."),
                fix="give each `--adapter NAME=PATH` another name.",
            )
        sub = resolve_checkpoint(path)
        if sub.adapter_dir is None:
            raise InvalidParameter(
                f"adapter {name!r} ({path}) is a full model, not a LoRA adapter.",
                fix="give the job's pytorch_model_folder trained with apply_lora=true and "
                "merge_lora_weights=false, or its adapter folder.",
            )
        if sub.base_id != ckpt.base_id:
            raise InvalidParameter(
                f"adapter {name!r} ({path}) was trained on base {sub.base_id} ({sub.model_dir}),"
                f" not on the served base {ckpt.base_id} ({ckpt.model_dir}).",
                fix="serve it on its own base model, or in a deployment of that base.",
            )
        peft_type = json.loads((sub.adapter_dir / "adapter_config.json").read_text()).get(
            "peft_type"
        )
        if peft_type != "LORA":
            raise InvalidParameter(
                f"adapter {name!r} is a {peft_type} adapter; only LoRA adapters can share "
                "one base in a batch.",
                fix="train the adapter with apply_lora=true (LoRA).",
            )
        named[name] = sub.adapter_dir
    return named
