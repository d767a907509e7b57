"""Measure the real peak memory of a few training steps, to calibrate `estimate.py`.

`measure_training()` starts a fresh Python process (so nothing of the caller's heap counts)
that imports torch, transformers and peft, records its RSS, resets the kernel's peak-RSS
mark, builds or loads the model, optionally wraps it with LoRA (peft), and runs `steps`
real training steps (forward with labels, loss, backward, AdamW step, zero_grad) on random
token batches of shape (batch_size, max_seq_length). It reports:

- `peak_delta_bytes`: peak RSS during load + training minus the RSS just before loading
  (the memory the model and training cost, on top of the imported libraries);
- `baseline_rss_bytes`: the RSS after the imports (the runtime's own cost);
- on CUDA, `cuda_peak_bytes`: `torch.cuda.max_memory_allocated()`.

The precision rules are those the estimate assumes of chattune's finetune step:
LoRA loads the frozen base in the training dtype (fp32 for "32", bf16 for "bf16", and
for "16" on CPU too, since fp16 on CPU becomes bf16; fp16 on CUDA), adapters in fp32; full
fine-tuning keeps fp32 weights and runs the forward under autocast for "16"/"bf16".

Run by hand: `python -m chattune.compute.measure '{"arch": {...}, "lora": true, ...}'`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.models.arch import ArchSpec


@dataclass
class Measurement:
    """Memory measured for a few training steps in a fresh process (bytes)."""

    peak_delta_bytes: int  # peak RSS (load + train) minus RSS before loading the model
    baseline_rss_bytes: int  # RSS after importing torch, transformers, peft
    load_delta_bytes: int  # RSS after loading (and wrapping) the model minus the baseline
    cuda_peak_bytes: int | None  # torch.cuda.max_memory_allocated(), on CUDA only
    num_parameters: int
    trainable_parameters: int
    losses: list[float]
    seconds: float


def hf_config_from_arch(arch: ArchSpec) -> dict[str, Any]:
    """A Hugging Face `config.json` dict for `arch` (llama, phi3, qwen2 model types)."""
    cfg: dict[str, Any] = {
        "model_type": arch.model_type,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads,
        "intermediate_size": arch.intermediate_size,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "tie_word_embeddings": arch.tie_word_embeddings,
    }
    if arch.head_dim:
        cfg["head_dim"] = arch.head_dim
    if arch.model_type == "llama":
        cfg["attention_bias"] = arch.qkv_bias
    if arch.model_type == "phi3":
        cfg["original_max_position_embeddings"] = arch.max_position_embeddings
        # Phi3Config's default special token ids (32000) break a smaller vocabulary
        cfg.update(pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return cfg


def measure_training(
    *,
    model_dir: str | Path | None = None,
    arch: ArchSpec | None = None,
    lora: bool = True,
    lora_r: int = 8,
    lora_targets: list[str] | None = None,
    precision: str = "32",
    max_seq_length: int = 256,
    batch_size: int = 1,
    steps: int = 2,
    gradient_checkpointing: bool = False,
    device: str = "cpu",
    timeout: float = 600,
) -> Measurement:
    """Run `steps` training steps in a subprocess and return the memory they took.

    Args:
        model_dir: a Hugging Face model folder to load; or
        arch: a shape to build a randomly initialised model from (same memory as real
            weights, nothing to download).
        lora, lora_r, lora_targets: wrap the model with peft LoRA (alpha 16, dropout 0);
            `lora_targets` default: every linear of a block.
        precision: "32", "16" or "bf16" (see the module docstring for what each loads).
        max_seq_length, batch_size: the shape of the random token batches.
        steps: training steps; 2 is enough for the peak (optimizer states exist from step 1).
        gradient_checkpointing: recompute each block's activations in the backward.
        device: "cpu" or "cuda".

    Raises:
        ValueError: neither or both of `model_dir` and `arch`.
        RuntimeError: the subprocess failed (its stderr is in the message).
    """
    if (model_dir is None) == (arch is None):
        raise ValueError("pass exactly one of model_dir and arch")
    args = {
        "model_dir": str(model_dir) if model_dir else None,
        "arch": arch.model_dump() if arch else None,
        "lora": lora,
        "lora_r": lora_r,
        "lora_targets": lora_targets,
        "precision": precision,
        "max_seq_length": max_seq_length,
        "batch_size": batch_size,
        "steps": steps,
        "gradient_checkpointing": gradient_checkpointing,
        "device": device,
    }
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "chattune.compute.measure", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    return Measurement(**json.loads(line))


def trace_layer(
    arch: ArchSpec, *, lora: bool, precision: str = "32", tokens: int = 256
) -> tuple[float, float]:
    """Bytes one decoder layer of `arch` saves for the backward, and allocates in all, per
    token (in this process; it imports torch, transformers and peft).

    Builds a one-layer model, runs the layer's forward on `tokens` random hidden states
    under a `TorchDispatchMode` that sums every new tensor and `saved_tensors_hooks` that
    collect what autograd keeps (deduplicated by storage; weights and autocast's weight copies
    excluded, they are counted as weights). `estimate._SAVED` holds these numbers fitted on
    several shapes.
    """
    import peft
    import torch
    import torch.utils._pytree as pytree
    import transformers
    from torch.utils._python_dispatch import TorchDispatchMode

    half = precision in ("16", "bf16")
    autocast = half and not lora
    dtype = torch.bfloat16 if (half and lora) else torch.float32
    one = arch.model_copy(update={"num_hidden_layers": 1})
    cfg = transformers.AutoConfig.for_model(**hf_config_from_arch(one))
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if lora:
        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                r=8,
                lora_alpha=16,
                target_modules=sorted(one.layer_linears()),
                task_type="CAUSAL_LM",
            ),
        )
    modules = dict(model.named_modules())
    layer = next(m for n, m in modules.items() if n.endswith("layers.0"))
    rotary = next(m for n, m in modules.items() if n.endswith("rotary_emb"))
    x = torch.randn(1, tokens, arch.hidden_size, dtype=dtype, requires_grad=True)
    positions = torch.arange(tokens)[None]
    position_embeddings = rotary(x, positions)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    casts: set[int] = set()
    saved: dict[int, int] = {}

    class _Count(TorchDispatchMode):
        allocated = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            out = func(*args, **(kwargs or {}))
            inputs = {
                t.untyped_storage().data_ptr()
                for t in pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)
            }
            fresh = [
                t
                for t in pytree.tree_leaves(out)
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs
            ]
            if inputs & params and "to_copy" in str(func):  # autocast's weight copies
                casts.update(t.untyped_storage().data_ptr() for t in fresh)
                return out
            sizes = [t.untyped_storage().nbytes() for t in fresh]
            self.allocated += sum(n for n in sizes if n >= tokens)
            return out

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in casts and t.untyped_storage().nbytes() >= tokens:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    counter = _Count()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        counter,
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
    ):
        layer(
            x, position_embeddings=position_embeddings, attention_mask=None, position_ids=positions
        )
    return sum(saved.values()) / tokens, counter.allocated / tokens


# -- the subprocess ----------------------------------------------------------------------


def _rss_and_peak() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) in bytes, from /proc/self/status."""
    status = Path("/proc/self/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]
    return rss, hwm


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def _run(args: dict[str, Any]) -> dict[str, Any]:
    import time
    import warnings

    import peft
    import torch
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    device = torch.device(args["device"])
    cuda = device.type == "cuda"
    precision = args["precision"]
    half = precision in ("16", "bf16")
    # fp16 on CPU becomes bf16; on CUDA "16" means fp16.
    half_dtype = torch.float16 if (precision == "16" and cuda) else torch.bfloat16
    load_dtype = half_dtype if (args["lora"] and half) else torch.float32
    autocast = half and not args["lora"]

    torch.manual_seed(0)
    baseline, _ = _rss_and_peak()
    _reset_peak()
    start = time.perf_counter()
    if args["model_dir"]:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args["model_dir"], dtype=load_dtype
        )
    else:
        cfg = transformers.AutoConfig.for_model(**hf_config_from_arch(ArchSpec(**args["arch"])))
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=load_dtype)
        # Some weights may stay untouched zero pages after init (not resident, so not in
        # RSS); real checkpoints are resident. Write every weight once to count it.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3)
    model.config.use_cache = False
    model.to(device)
    if args["gradient_checkpointing"]:
        gc_kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    num_parameters = sum(p.numel() for p in model.parameters())
    if args["lora"]:
        targets = args["lora_targets"] or sorted(
            ArchSpec.from_hf_config(model.config.to_dict()).layer_linears()
        )
        lora_cfg = peft.LoraConfig(
            r=args["lora_r"],
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, lora_cfg)
    model.train()
    loaded, _ = _rss_and_peak()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size
    shape = (args["batch_size"], args["max_seq_length"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses = []
    for _ in range(args["steps"]):
        ids = torch.randint(0, vocab, shape, device=device)
        with torch.autocast(device.type, dtype=half_dtype, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        del loss
    _, peak = _rss_and_peak()
    return {
        "peak_delta_bytes": peak - baseline,
        "baseline_rss_bytes": baseline,
        "load_delta_bytes": loaded - baseline,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "num_parameters": num_parameters,
        "trainable_parameters": sum(p.numel() for p in params),
        "losses": losses,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(_run(json.loads(argv[0]))))


if __name__ == "__main__":
    main()
