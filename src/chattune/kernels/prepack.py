"""Linear layers with their weights packed once for oneDNN: the CPU serving fast path.

`F.linear` on a CPU gives oneDNN the plain (out, in) weight, which oneDNN reorders into its
blocked layout inside every call. At decode sizes (one row per request) that reorder costs as
much as the product itself. Packing each weight once at load time, as inductor's freezing pass
and IPEX do, avoids it. On this project's 2-core AVX512-BF16 CPU, the 210 linears of
SmolLM2-135M at 16 rows took 33 ms plain and 18 ms packed in bf16. In fp32, at 1 to 32 rows,
packed ran 1.3-2x faster. bench/profile_decode.py measures the whole engine with packing on
and off.

- bf16 results are bit-identical to `F.linear`.
- fp32 results differ in summation order only (about 1e-6).

What is packed:
- Only exact `nn.Linear` modules, on a CPU, in float32 or bfloat16, are packed, including the
  base layers under PEFT's LoRA wrappers and the (maybe tied) lm_head.
- LoRA's own A/B matrices stay plain, because PEFT reads their `.weight` in its forward.

A packed module keeps no plain weight, so memory does not double. It serves inference only: no
autograd, no merging, no new adapters after packing.

Example:
    >>> n = prepack_linears(model)  # after every adapter is loaded
    >>> model(input_ids=ids).logits  # same logits, faster at small batches
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger("chattune.serving")

_DTYPES = (torch.float32, torch.bfloat16)
_SELF_CHECK_ROWS = 3


def _ops_available(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    )


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward on a weight packed for oneDNN (`torch.ops.mkldnn`).

    Args:
        linear: the layer to replace; its weight is read once and not kept.
        batch_hint: the typical number of rows per call, used by oneDNN to pick the layout.
    """

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)
        self.dtype = w.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.dtype}, packed for oneDNN"
        )


def _matches(linear: nn.Linear, packed: PackedLinear) -> bool:
    """Whether `packed` computes what `linear` does (up to fp32 summation order)."""
    with torch.inference_mode():
        x = torch.randn(_SELF_CHECK_ROWS, linear.in_features, dtype=packed.dtype)
        want, got = linear(x).float(), packed(x).float()
    tol = 1e-2 if packed.dtype == torch.bfloat16 else 1e-4
    return bool(torch.allclose(got, want, rtol=tol, atol=tol))


def _packable(module: nn.Module) -> bool:
    return (
        type(module) is nn.Linear
        and module.weight.device.type == "cpu"
        and module.weight.dtype in _DTYPES
    )


def prepack_linears(model: nn.Module, batch_hint: int = 16) -> int:
    """Replace `model`'s CPU `nn.Linear` layers by `PackedLinear` in place.

    Falls back to changing nothing, with a warning, when this torch build lacks the
    ops or the first packed layer does not reproduce its plain layer.

    Args:
        model: an inference model (no training after this); LoRA A/B matrices (`lora_` in
            their path) are left as they are.
        batch_hint: the typical number of rows per call, such as the engine's batch size.

    Returns:
        How many layers were packed (0 when none could be).
    """
    targets: list[tuple[nn.Module, str, nn.Linear]] = []
    for path, parent in model.named_modules():
        if "lora_" in path:
            continue
        for name, child in parent.named_children():
            if _packable(child):
                targets.append((parent, name, child))
    if not targets:
        return 0
    dtype = targets[0][2].weight.dtype
    if not _ops_available(dtype):
        log.info("oneDNN weight packing is not available here: linears stay plain")
        return 0
    first = PackedLinear(targets[0][2], batch_hint)
    if not _matches(targets[0][2], first):
        log.warning("oneDNN packed linear disagrees with nn.Linear: linears stay plain")
        return 0
    done: dict[int, PackedLinear] = {}  # a layer shared by two parents is packed once
    for parent, name, child in targets:
        key = id(child)
        if key not in done:
            done[key] = first if child is targets[0][2] else PackedLinear(child, batch_hint)
        setattr(parent, name, done[key])
    return len(targets)


def packed_count(model: Any) -> int:
    """How many `PackedLinear` layers `model` holds."""
    return sum(isinstance(m, PackedLinear) for m in model.modules())
