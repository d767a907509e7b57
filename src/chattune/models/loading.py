"""The one model stack: the dtype rule, the tokenizer, the weights (with LoRA adapters).

Finetune, evaluate, convert and serving load through here, so a model folder means the same
thing to each step:

- `compute_dtype(precision, device)`: which dtype a precision runs in on a device (the rule
  below); `serving_dtype` is the model server's `--dtype` on top of it.
- `load_tokenizer(checkpoint or folder)`: the tokenizer stored with the model, with its chat
  template.
- `load_base(model_dir, dtype)`: the causal LM's weights, nothing applied.
- `load_model(checkpoint, adapters, device=, dtype=)`: eval mode on the device, every LoRA
  adapter loaded unmerged (mixed batches), linear layers prepacked for oneDNN on a CPU.

The dtype rule. Half precision on a CPU is bf16, and only where the CPU has bf16 instructions
(AMX, AVX512-BF16): emulated bf16 is ~100-500x slower than fp32, and fp16 matmuls are slow or
missing on CPUs. On a GPU, bf16 needs Ampere or later; before it, fp16.

Example:
    >>> ckpt = resolve_checkpoint(Path("jobs/j1/outputs/pytorch_model_folder"))
    >>> device = torch.device("cpu")
    >>> model, adapters = load_model(ckpt, device=device, dtype=compute_dtype("bf16", device))
    >>> tokenizer = load_tokenizer(ckpt)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chattune.errors import InvalidParameter
from chattune.host import machine
from chattune.models.checkpoint import Checkpoint, resolve_checkpoint

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_ADAPTER = "default"  # the PEFT name of a checkpoint's own adapter
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
SERVING_DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ENV = "CHATTUNE_SERVING_DTYPE"  # the model server's --dtype default (instances inherit it)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype that a precision runs in on `device`: the one rule of the module docstring.

    Args:
        precision: the pipeline's "32" (fp32), "16" (fp16) or "bf16", or "auto" (the fastest
            half precision the device has, as the model server's default).
        device: where the model runs.

    Returns:
        float32 for "32"; on a CPU, bfloat16 where it has bf16 instructions and float32
        elsewhere; on a GPU, float16 for "16", bfloat16 for "bf16" and "auto" where the GPU
        has it, float16 elsewhere.
    """
    import torch

    if precision == "32":
        return torch.float32
    if device.type != "cuda":
        return torch.bfloat16 if machine.cpu_bf16_supported() else torch.float32
    if precision == "16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def serving_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The weights' dtype of a model server.

    Args:
        device: where the model runs.
        requested: "auto" (`compute_dtype("auto", device)`: bf16 on GPUs and on CPUs with bf16
            instructions, else fp16 on GPUs and fp32 on CPUs; measured 1.3x faster decode than
            fp32 on an AVX512-BF16 CPU with packed weights, 1.8-2.2x without, BENCHMARKS.md),
            or one of "float32", "bfloat16", "float16" as it is.

    Raises:
        InvalidParameter: `requested` is none of `SERVING_DTYPES`.
    """
    import torch

    if requested not in SERVING_DTYPES:
        raise InvalidParameter(
            f"dtype {requested!r} is not one of {', '.join(SERVING_DTYPES)}",
            fix="pass --dtype auto (or set CHATTUNE_SERVING_DTYPE=auto)",
        )
    if requested != "auto":
        return getattr(torch, requested)
    return compute_dtype("auto", device)


def load_tokenizer(
    source: Checkpoint | Path, *, chat_template: bool = True
) -> PreTrainedTokenizerBase:
    """The tokenizer stored with a model.

    Args:
        source: a resolved checkpoint (its `tokenizer_dir`: the adapter's tokenizer when one
            was saved with it), or a folder with the tokenizer files.
        chat_template: require a chat template (every step that turns conversations into
            prompts does).

    Raises:
        InvalidParameter: `chat_template` and the tokenizer has none.
    """
    from transformers import AutoTokenizer

    folder = source.tokenizer_dir if isinstance(source, Checkpoint) else Path(source)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if chat_template and not tokenizer.chat_template:
        raise InvalidParameter(
            f"the tokenizer in {folder} has no chat template: conversations cannot be turned "
            "into prompts.",
            fix="import the base model with a chat template (`chat_template` of the model "
            "import step) and fine-tune it again.",
        )
    return tokenizer


def load_base(
    model_dir: Path, dtype: torch.dtype | str, attn_implementation: str | None = None
) -> PreTrainedModel:
    """The causal LM in `model_dir` on the CPU, in `dtype` ("auto": as saved), nothing applied.

    Args:
        model_dir: a Hugging Face model folder (config.json and weights).
        dtype: the weights' dtype.
        attn_implementation: transformers' attention name (None: its default, sdpa).
    """
    from transformers import AutoModelForCausalLM

    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kw)


def load_model(
    ckpt: Checkpoint,
    adapters: Mapping[str, Path] | None = None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    prepack: bool = True,
    attn_implementation: str | None = None,
    merge: bool = False,
) -> tuple[PreTrainedModel, list[str]]:
    """The model in eval mode, with every LoRA adapter loaded (not merged) for mixed batches,
    or its one adapter merged into the weights (`merge`).

    Args:
        ckpt: the checkpoint; its own adapter (if any) is loaded as `DEFAULT_ADAPTER`.
        adapters: more adapters by name; each path goes through `resolve_checkpoint` and must
            hold an adapter for the same base weights.
        device: where the model runs.
        dtype: its weights' dtype.
        prepack: on a CPU, pack the linear layers' weights once for oneDNN
            (`prepack.prepack_linears`: same results, faster decode); the model is then for
            inference only.
        attn_implementation: transformers' attention name (None: sdpa).
        merge: merge the checkpoint's adapter into the base weights (`merge_and_unload`):
            one model, no LoRA products or dtype casts in each linear layer (the evaluate
            step). Only without `adapters`.

    Returns:
        The model (a `PeftModel` when there is any unmerged adapter) and the adapter names
        loaded (none when merged).

    Raises:
        ChattuneError: an adapter is missing, is not a LoRA adapter, or is for another base.
    """
    named = _adapter_dirs(ckpt, adapters or {})
    model: Any = load_base(ckpt.model_dir, dtype, attn_implementation)
    if named:
        from peft import PeftModel  # heavy: only when there is an adapter

        first, *rest = named.items()
        model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0])
        for name, adapter_dir in rest:
            model.load_adapter(adapter_dir, adapter_name=name)
    model.to(device).eval()
    if merge and named:
        if len(named) > 1:
            raise InvalidParameter(
                f"merge=True merges one adapter, and {len(named)} are asked for "
                f"({', '.join(named)}).",
                fix="merge only the checkpoint's own adapter (pass no `adapters`), or load them "
                "unmerged (merge=False) for mixed batches.",
            )
        model, named = model.merge_and_unload(), {}
    if prepack and device.type == "cpu":
        from chattune.kernels.prepack import prepack_linears  # torch at import

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


def cache_keyword(model: Any) -> str:
    """The keyword a causal LM's forward takes its KV cache by: transformers 5.24 renamed
    `past_key_values` to `cache` (the old name goes in 5.40). `model` may be a `PeftModel`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
