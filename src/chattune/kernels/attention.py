"""Attention for padding-free packed batches: each conversation attends only to itself.

A packed training row holds several conversations back to back (`packing.PackedCollator`).
transformers' `sdpa` path makes that correct with a (T x T) block-diagonal mask, so every
row pays for T^2 attention and the masked SDPA kernel: at 4 x 512 tokens of chitchat this
was 43% of a SmolLM2 LoRA step on this CPU (bench/profile_train_step.py). Flash-attention's
varlen kernels avoid it on CUDA; `packed_sdpa_forward` does the same anywhere: it slices the
row at the `cu_seq_lens_q` boundaries the collator sends and runs causal SDPA (no mask) per
conversation, so the cost is sum(L_i^2) instead of T^2. On a CPU in bf16, each conversation
takes `blocked_attention.blocked_causal_attention` (query blocks over oneDNN's batched
matmuls: 2x SDPA's flash kernel forward + backward at 512 tokens here) where it is the
faster kernel; `CHATTUNE_ATTENTION_KERNEL=sdpa` keeps SDPA everywhere (`attention_kernel`).

    >>> from chattune.kernels.attention import PACKED_ATTENTION, register
    >>> register()  # once per process; then
    >>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=PACKED_ATTENTION)

The name is registered with transformers' `AttentionInterface` but not with its mask
interface, so the model builds no mask at all: the function must be given `cu_seq_lens_q`
and refuses a batch without it (a padded batch needs a mask; use `sdpa` for those).

Serving needs both: prompts prefilled packed, then padded batches decoded with a mask.
`PACKED_OR_SDPA` (`register_serving()`) is `packed_sdpa_forward` when the call carries
`cu_seq_lens_q`, `decode_attention_forward` for one new token per row, and transformers'
`sdpa` (with its mask) otherwise.

`decode_attention_forward`: one query per row. transformers' sdpa stacks the query heads of
a key/value group as rows of one SDPA call (its `pack_gqa`) when the step has a padding mask.
Without one (no padding, such as a single request), it calls SDPA's GQA mode instead. In bf16
on this project's AVX512-BF16 CPU, that mode was 3-7x slower than the stacked call with
bit-identical output: 171 against 36 us at 1 row x 300 keys, and 2,949 against 482 us at 16
rows (SmolLM2's 9/3 heads). So decode steps always take the stacked call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from chattune.errors import InvalidParameter
from chattune.kernels.blocked_attention import blocked_causal_attention, use_blocked

PACKED_ATTENTION = "chattune_packed"
PACKED_OR_SDPA = "chattune_packed_or_sdpa"
KERNEL_ENV = "CHATTUNE_ATTENTION_KERNEL"
KERNELS = ("auto", "sdpa")


def attention_kernel() -> str:
    """The packed attention's kernel per conversation, from `CHATTUNE_ATTENTION_KERNEL`:
    "auto" (the default) takes `blocked_attention.blocked_causal_attention` where it is the
    faster kernel (CPU bf16) and SDPA elsewhere; "sdpa" always takes SDPA. Any other value
    raises `InvalidParameter` (the finetune step and the model server check it at start)."""
    value = os.environ.get(KERNEL_ENV, "auto").strip().lower() or "auto"
    if value not in KERNELS:
        raise InvalidParameter(
            f"{KERNEL_ENV}={os.environ[KERNEL_ENV]!r} is not an attention kernel.",
            fix=f"set it to one of {', '.join(KERNELS)}, or unset it (auto).",
        )
    return value


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
    p = dropout if module.training else 0.0
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    blocked = attention_kernel() == "auto" and not p
    # Without autograd (a prefill, an evaluation), SDPA's GQA mode reads the key/value heads
    # in place: bit-identical, and 1.3-1.6x faster than copying them per query head (2,038
    # tokens of 16 prompts, bf16 and fp32, this project's CPU). With autograd, copying is
    # kept: the GQA backward was slower in bf16 here (64 vs 54 ms for a 2,048-token row).
    gqa = groups > 1 and not torch.is_grad_enabled()
    repeated: list[Any] = []

    def sdpa(a: int, b: int) -> Any:
        k, v = key, value
        if groups > 1 and not gqa:
            if not repeated:
                repeated.extend(x.repeat_interleave(groups, dim=1) for x in (key, value))
            k, v = repeated
        return F.scaled_dot_product_attention(
            query[:, :, a:b],
            k[:, :, a:b],
            v[:, :, a:b],
            dropout_p=p,
            is_causal=True,
            scale=scaling,
            **({"enable_gqa": True} if gqa else {}),
        )

    def one(a: int, b: int) -> Any:
        if blocked and use_blocked(query, key, value, b - a):
            q, k, v = (x[0, :, a:b] for x in (query, key, value))
            return blocked_causal_attention(q, k, v, scale).unsqueeze(0)
        return sdpa(a, b)

    outs = [one(a, b) for a, b in pairwise(cu.tolist()) if b > a]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register `packed_sdpa_forward` with transformers under `PACKED_ATTENTION`; idempotent."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_forward)
    return PACKED_ATTENTION


def decode_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    decode_buckets: Sequence[tuple[int, int, int]] | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention of one new token per row, the query heads of each key/value head stacked:
    query (B, H, 1, D), key/value (B, H_kv, T, D), `attention_mask` None or sdpa's
    (B or 1, 1, 1, T) mask -> (B, 1, H, D).

    `decode_buckets`: (first row, end row, width) that cover the rows in order; each bucket
    attends over only the last `width` columns, which must hold all of its rows' keys (the
    engine's rows are left-padded: see `serving.engine.decode_buckets`).
    """
    import torch
    import torch.nn.functional as F

    b, h, _, d = query.shape
    t = key.shape[2]
    # query head i reads key/value head i // (h // kv), as `repeat_kv` lays them out
    q = query.reshape(b, key.shape[1], h // key.shape[1], d)
    if not decode_buckets or len(decode_buckets) == 1 or decode_buckets[-1][1] != b:
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask, scale=scaling)
        return out.reshape(b, 1, h, d), None
    outs = []
    for r0, r1, width in decode_buckets:
        cols = slice(t - width, t)
        mask = attention_mask
        if mask is not None:
            mask = mask[..., cols] if mask.shape[0] == 1 else mask[r0:r1, ..., cols]
        outs.append(
            F.scaled_dot_product_attention(
                q[r0:r1], key[r0:r1, :, cols], value[r0:r1, :, cols], attn_mask=mask, scale=scaling
            )
        )
    return torch.cat(outs).reshape(b, 1, h, d), None


def _decode_call(query: Any, key: Any, attention_mask: Any, kwargs: dict[str, Any]) -> bool:
    """Whether `decode_attention_forward` computes this call as sdpa would: one query, no
    dropout, softcap, sinks or position bias, and a mask (if any) shared by the heads."""
    return (
        query.shape[2] == 1
        and query.shape[1] % key.shape[1] == 0
        and not kwargs.get("dropout")
        and kwargs.get("softcap") is None
        and kwargs.get("s_aux") is None
        and kwargs.get("position_bias") is None
        and (attention_mask is None or attention_mask.shape[1] == attention_mask.shape[2] == 1)
    )


def _serving_forward(
    packed: bool, decode: bool, module: Any, query: Any, key: Any, value: Any, mask: Any, **kw: Any
) -> tuple[Any, Any]:
    buckets = kw.pop("decode_buckets", None)
    if packed and kw.get("cu_seq_lens_q") is not None:
        return packed_sdpa_forward(module, query, key, value, mask, **kw)
    if decode and _decode_call(query, key, mask, kw):
        return decode_attention_forward(
            module, query, key, value, mask, decode_buckets=buckets, **kw
        )
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kw)


SERVING_ATTENTIONS = {  # (packed prefill, decode attention): the registered name
    (True, True): PACKED_OR_SDPA,
    (True, False): "chattune_packed_sdpa_decode",
    (False, True): "chattune_decode_or_sdpa",
}


def register_serving(packed: bool = True, decode: bool = True) -> str:
    """Register the serving attention (with sdpa's mask) that takes packed prefills
    (`packed`) and decode steps (`decode`) its own way and the rest to sdpa; idempotent.
    Returns its name ("sdpa" when both are off)."""
    from functools import partial

    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if not (packed or decode):
        return "sdpa"
    name = SERVING_ATTENTIONS[packed, decode]
    AttentionInterface.register(name, partial(_serving_forward, packed, decode))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    return name
