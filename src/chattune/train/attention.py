"""Attention for padding-free packed batches: each conversation attends only to itself.

A packed training row holds several conversations back to back (`packing.PackedCollator`).
transformers' `sdpa` path makes that correct with a (T x T) block-diagonal mask, so every
row pays for T^2 attention and the masked SDPA kernel: at 4 x 512 tokens of chitchat this
was 43% of a SmolLM2 LoRA step on this CPU (bench/profile_train_step.py). Flash-attention's
varlen kernels avoid it on CUDA; `packed_sdpa_forward` does the same anywhere: it slices the
row at the `cu_seq_lens_q` boundaries the collator sends and runs causal SDPA (no mask) per
conversation, so the cost is sum(L_i^2) instead of T^2.

    >>> from chattune.train.attention import PACKED_ATTENTION, register
    >>> register()  # once per process; then
    >>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=PACKED_ATTENTION)

The name is registered with transformers' `AttentionInterface` but not with its mask
interface, so the model builds no mask at all: the function must be given `cu_seq_lens_q`
and refuses a batch without it (a padded batch needs a mask; use `sdpa` for those).

Serving needs both: prompts prefilled packed, then padded batches decoded with a mask.
`PACKED_OR_SDPA` (`register_serving()`) is `packed_sdpa_forward` when the call carries
`cu_seq_lens_q` and transformers' `sdpa` (with its mask) otherwise.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

PACKED_ATTENTION = "chattune_packed"
PACKED_OR_SDPA = "chattune_packed_or_sdpa"


def packed_sdpa_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal attention per packed sequence; shapes as transformers' attention functions:
    query (1, H, T, D), key/value (1, H_kv, T, D) -> (1, T, H, D)."""
    import torch
    import torch.nn.functional as F

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        raise ValueError(
            f"attention {PACKED_ATTENTION!r} needs `cu_seq_lens_q` (packing.PackedCollator with "
            "flash_attn_kwargs=True); it builds no mask, so for padded batches or generation "
            "load the model with attn_implementation='sdpa'"
        )
    if query.shape[0] != 1:
        raise ValueError(
            f"attention {PACKED_ATTENTION!r} expects one packed row, got {query.shape[0]}"
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    bounds = cu.tolist()
    p = dropout if module.training else 0.0
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            dropout_p=p,
            is_causal=True,
            scale=scaling,
        )
        for a, b in pairwise(bounds)
        if b > a
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register `packed_sdpa_forward` with transformers under `PACKED_ATTENTION`; idempotent."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_forward)
    return PACKED_ATTENTION


def packed_or_sdpa_forward(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """`packed_sdpa_forward` for a packed call (with `cu_seq_lens_q`), else transformers' sdpa."""
    if kwargs.get("cu_seq_lens_q") is not None:
        return packed_sdpa_forward(module, query, key, value, attention_mask, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_serving() -> str:
    """Register `packed_or_sdpa_forward` (with sdpa's mask) under `PACKED_OR_SDPA`; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(PACKED_OR_SDPA, packed_or_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_OR_SDPA, sdpa_mask)
    return PACKED_OR_SDPA
