"""Where the weights, the adapter and the tokenizer of a model folder are: the folder layouts.

Four layouts are read (by serving, evaluate and convert alike):

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
from dataclasses import dataclass
from pathlib import Path

import yaml

from chattune.errors import ChattuneError

ADAPTER_SUBDIR = "adapter"  # an unmerged LoRA adapter inside a pytorch_model_folder
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
            return checkpoint(path, adapter, "pytorch_model_folder")
        return checkpoint(path)
    if (path / "adapter_config.json").is_file():
        return _peft_adapter(path)
    raise ChattuneError(
        f"{path} holds no model: no config.json (Hugging Face model), no MLmodel (MLflow "
        f"model) and no adapter_config.json (PEFT adapter). It has: "
        f"{', '.join(sorted(p.name for p in path.iterdir())[:12]) or 'nothing'}.",
        fix="point at the model folder itself, e.g. a job's outputs/mlflow_model_folder.",
    )


def checkpoint(model_dir: Path, adapter_dir: Path | None = None, kind: str = "hf") -> Checkpoint:
    """The checkpoint of base weights in `model_dir` and maybe a LoRA adapter on them.

    The tokenizer is the adapter's when one was saved with it (`tokenizer_config.json`), else
    the base model's: a fine-tune that added tokens or a chat template keeps them there.
    """
    tok = model_dir
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        tok = adapter_dir
    return Checkpoint(model_dir, adapter_dir, base_id(model_dir), tok, kind)


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
    return checkpoint(base_dir.resolve(), path, "peft_adapter")
