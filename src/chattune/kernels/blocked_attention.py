"""Causal attention in query blocks: bf16 attention on CPUs, forward and backward.

On this project's CPU (AVX512-BF16, 2 cores) SDPA's CPU flash kernel is the slow part of a
packed LoRA step: one SmolLM2 conversation of 512 tokens took 17.8 ms forward + backward
there, while the bf16 batched matmuls it needs take about 4 ms. `blocked_causal_attention`
computes the same attention from those matmuls (`torch.baddbmm`/`torch.bmm`, oneDNN) and
PyTorch's softmax, one block of `BLOCK` query rows at a time:

- each block attends to the keys up to its last row only, so the upper triangle is skipped
  for all but the diagonal block (10 of 16 tiles at 512 tokens);
- the causal mask and the scale ride in the `baddbmm` (a cached (rows, keys) bias);
- the query heads of a key/value head are stacked as rows of one product (grouped-query
  attention without copying the key/value heads, and their gradients summed by the product);
- the backward recomputes each block's probabilities (nothing L x L is kept between forward
  and backward: the memory of a flash kernel) and uses `torch._softmax_backward_data`.

Measured on bf16 tensors with SmolLM2's heads (bench/attention_kernels.py, 05:20 UTC),
forward + backward against SDPA's flash kernel: 1.1-2.1x faster from 32 to 2,048 tokens
(7.8 against 16.0 ms at 512). The scores and probabilities are rounded to bf16 between the
products, as in transformers' eager bf16 attention, so the query gradient's error against
fp32 is 0.36-0.45% against flash's 0.25% (output and key/value gradients as close as
flash's); losses and gradients of a whole step agree within bf16 rounding
(tests/train/test_blocked_attention.py). Without autograd (a prefill, an evaluation)
1.4-2x from 128 to 2,048 tokens, while flash (in SDPA's GQA mode) is faster under about 100.
In fp32 the products are not faster than flash's own, so fp32 (and anything but CPU bf16)
stays with SDPA: `use_blocked` says when this kernel is taken.
"""

from __future__ import annotations

from typing import Any

BLOCK = 128  # query rows per block: the fastest of 64/128/256/512 from 128 to 2,048 tokens
# Below it, SDPA's flash kernel (GQA mode) wins a forward without autograd: 0.7x at 64
# tokens, 0.97x at 96, 1.25-1.6x at 112 (bench/attention_kernels.py and a sweep, 05:30 UTC)
MIN_NO_GRAD_TOKENS = 112


def use_blocked(query: Any, key: Any, value: Any, length: int) -> bool:
    """Whether `blocked_causal_attention` is the faster kernel for this call: bf16 on CPU
    (with autograd at any length, without it from `MIN_NO_GRAD_TOKENS` tokens)."""
    import torch

    return (
        query.device.type == "cpu"
        and query.dtype == key.dtype == value.dtype == torch.bfloat16
        and query.shape[1] % key.shape[1] == 0
        and (torch.is_grad_enabled() or length >= MIN_NO_GRAD_TOKENS)
    )


def blocked_causal_attention(query: Any, key: Any, value: Any, scale: float) -> Any:
    """Causal attention of one sequence: query (H, L, D), key/value (H_kv, L, D), query head
    i reading key/value head i // (H // H_kv) -> (H, L, D). Differentiable."""
    kv = key.shape[0]
    h, length, d = query.shape
    return _function().apply(query.unflatten(0, (kv, -1)), key, value, scale).view(h, length, d)


_BIAS: dict[tuple, Any] = {}


def _bias(rows: int, groups: int, dtype: Any, width: int) -> Any:
    """(groups * rows, width) additive mask of a block whose diagonal tile ends the row: 0 up
    to and on the diagonal, -inf above it, the rows repeated for each stacked query head. A
    view of a cached tensor, widened (to a power of two) when a longer sequence comes."""
    import torch

    key = (rows, groups, dtype)
    cached = _BIAS.get(key)
    if cached is None or cached.shape[1] < width:
        wide = max(2 * rows, 1 << (width - 1).bit_length())
        cached = torch.zeros(rows, wide, dtype=dtype)
        cached[:, wide - rows :] = torch.full((rows, rows), float("-inf"), dtype=dtype).triu_(1)
        cached = _BIAS[key] = cached.repeat(groups, 1)
    return cached[:, cached.shape[1] - width :]


_FUNCTION: list[Any] = []  # the autograd.Function, built on first use (torch is imported lazily)


def _function() -> Any:
    if _FUNCTION:
        return _FUNCTION[0]
    import torch

    def blocks(length: int) -> list[tuple[int, int]]:
        return [(r0, min(length, r0 + BLOCK)) for r0 in range(0, length, BLOCK)]

    def rows_of(x: Any, r0: int, r1: int) -> Any:  # (kv, g, L, D) -> (kv, g * rows, D)
        return x[:, :, r0:r1].reshape(x.shape[0], -1, x.shape[3])

    def probs(q: Any, k: Any, r0: int, r1: int, scale: float) -> Any:
        """Block [r0, r1)'s probabilities over the keys up to r1: (kv, groups * rows, r1)."""
        bias = _bias(r1 - r0, q.shape[1] // (r1 - r0), q.dtype, r1)
        return torch.softmax(torch.baddbmm(bias, q, k[:, :r1].transpose(1, 2), alpha=scale), -1)

    class CausalAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, scale: float) -> Any:
            kv, g, length, d = q.shape
            with torch.autocast("cpu", enabled=False):
                outs = [
                    torch.bmm(probs(rows_of(q, r0, r1), k, r0, r1, scale), v[:, :r1]).view(
                        kv, g, r1 - r0, d
                    )
                    for r0, r1 in blocks(length)
                ]
            ctx.save_for_backward(q, k, v)
            ctx.scale = scale
            return outs[0] if len(outs) == 1 else torch.cat(outs, 2)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            q, k, v = ctx.saved_tensors
            scale = ctx.scale
            kv, g, length, d = q.shape
            dq = torch.empty_like(q)
            dk = torch.zeros(k.shape, dtype=torch.float32)
            dv = torch.zeros(v.shape, dtype=torch.float32)
            with torch.autocast("cpu", enabled=False):
                for r0, r1 in blocks(length):
                    qi, gi = rows_of(q, r0, r1), rows_of(grad, r0, r1)
                    p = probs(qi, k, r0, r1, scale)
                    dv[:, :r1] += torch.bmm(p.transpose(1, 2), gi)
                    dp = torch.bmm(gi, v[:, :r1].transpose(1, 2))
                    ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
                    dq[:, :, r0:r1] = torch.bmm(ds, k[:, :r1]).view(kv, g, r1 - r0, d)
                    dk[:, :r1] += torch.bmm(ds.transpose(1, 2), qi)
            return dq.mul_(scale), dk.mul_(scale).to(k.dtype), dv.to(v.dtype), None

    _FUNCTION.append(CausalAttention)
    return CausalAttention
