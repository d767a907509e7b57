"""Attention kernels: chattune's against the alternatives (issue 6).

Microbenchmarks on random bf16 tensors with SmolLM2-135M's heads (9 query heads, 3
key/value heads, head size 64), medians of `--iters` calls after a warm-up, each variant's
error against an fp32 reference:

  decode    one new token per row, 16 rows, keys/values as the engine keeps them: views
            (rows, kv_heads, lo:hi, head_dim) of preallocated slabs (`serving.kvcache`), the
            query heads of each key/value head stacked
            (`kernels.attention.decode_attention_forward`)
              flash            SDPA (its CPU flash kernel) on the slab views: chattune's path
              math_views       matmul -> fp32 softmax -> matmul (transformers' eager
                               attention) on the same views
              math_contiguous  the same on contiguous copies made beforehand (the copy, one
                               per step and layer in a real decode, is not timed)
  train     causal attention of one conversation, forward and backward
              flash            SDPA's flash kernel, key/value heads repeated as the packed
                               training path does with autograd (CHATTUNE_ATTENTION_KERNEL=sdpa)
              math             matmul -> fp32 softmax -> matmul (eager), heads repeated
              blocked          kernels/blocked_attention.py: query blocks over batched matmuls,
                               grouped heads stacked (chattune's default in CPU bf16)
  prefill   the same without autograd (a prefill, an evaluation): flash in SDPA's GQA mode
            (the packed path's SDPA call there) against blocked

    .venv/bin/python bench/attention_kernels.py              # ~1 min

Every kernel here is one chattune takes in CPU bf16 only. On a CPU without bf16 instructions
(`host.machine.cpu_bf16_supported`) bf16 is emulated, 100x slower, and chattune serves and
trains in fp32 with SDPA's kernels: the script then measures nothing and says so (`--force`
measures anyway).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from common import parser, utc_stamp, write_result

from chattune.kernels.blocked_attention import blocked_causal_attention

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def timed(fn: Callable[[], Any], iters: int) -> float:
    """Median seconds of `fn()` over `iters` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def decode_case(width: int, rows: int, iters: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    bf16, groups = torch.bfloat16, HEADS // KV_HEADS
    slab_k = torch.randn(2 * rows, KV_HEADS, width + 128, HEAD_DIM, dtype=bf16)
    slab_v = torch.randn_like(slab_k)
    k, v = slab_k[:rows, :, 64 : 64 + width], slab_v[:rows, :, 64 : 64 + width]
    q = torch.randn(rows, KV_HEADS, groups, HEAD_DIM, dtype=bf16)
    mask = torch.zeros(rows, 1, 1, width, dtype=bf16)
    for r in range(1, rows):  # left padding, as the engine's rows of unequal lengths have
        mask[r, ..., : (r * width) // (2 * rows)] = float("-inf")
    scale = HEAD_DIM**-0.5
    kc, vc = k.contiguous(), v.contiguous()

    def math(key: Any, value: Any) -> Any:
        scores = torch.matmul(q, key.transpose(-1, -2)).float().mul_(scale).add_(mask)
        return torch.matmul(scores.softmax(-1).to(bf16), value)

    variants = {
        "flash": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
        "math_views": lambda: math(k, v),
        "math_contiguous": lambda: math(kc, vc),
    }
    ref = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=mask.float(), scale=scale
    )
    out: dict[str, Any] = {"width": width, "rows": rows}
    with torch.inference_mode():
        for name, fn in variants.items():
            out[f"{name}_us"] = round(1e6 * timed(fn, iters), 1)
            out[f"{name}_max_err"] = round(float((fn().float() - ref).abs().max()), 5)
    return out


def train_case(length: int, iters: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    bf16, groups = torch.bfloat16, HEADS // KV_HEADS
    q0 = torch.randn(1, HEADS, length, HEAD_DIM, dtype=bf16)
    k0 = torch.randn(1, KV_HEADS, length, HEAD_DIM, dtype=bf16)
    v0 = torch.randn(1, KV_HEADS, length, HEAD_DIM, dtype=bf16)
    grad = torch.randn(1, HEADS, length, HEAD_DIM, dtype=bf16)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    bias = torch.zeros(length, length).masked_fill_(~causal, float("-inf"))
    scale = HEAD_DIM**-0.5

    def step(kind: str, dtype: Any = bf16) -> tuple[Any, Any]:
        q, k, v = (x.to(dtype, copy=True).requires_grad_() for x in (q0, k0, v0))
        if kind == "blocked":
            o = blocked_causal_attention(q[0], k[0], v[0], scale)[None]
            o.backward(grad.to(dtype))
            return o.detach().float(), q.grad.float()
        kr, vr = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        if kind == "flash":
            o = F.scaled_dot_product_attention(q, kr, vr, is_causal=True, scale=scale)
        else:
            scores = torch.matmul(q, kr.transpose(-1, -2)).float() * scale + bias
            o = torch.matmul(scores.softmax(-1).to(dtype), vr)
        o.backward(grad.to(dtype))
        return o.detach().float(), q.grad.float()

    ref_out, ref_grad = step("flash", torch.float32)
    out: dict[str, Any] = {"length": length}
    for name in ("flash", "math", "blocked"):
        out[f"{name}_ms"] = round(1e3 * timed(lambda n=name: step(n), iters), 2)
        o, g = step(name)
        out[f"{name}_max_err"] = round(float((o - ref_out).abs().max()), 5)
        out[f"{name}_grad_rel_err"] = round(float((g - ref_grad).norm() / ref_grad.norm()), 5)
    with torch.no_grad():
        out["prefill_flash_ms"] = round(
            1e3
            * timed(
                lambda: F.scaled_dot_product_attention(
                    q0, k0, v0, is_causal=True, scale=scale, enable_gqa=True
                ),
                iters,
            ),
            2,
        )
        out["prefill_blocked_ms"] = round(
            1e3 * timed(lambda: blocked_causal_attention(q0[0], k0[0], v0[0], scale), iters), 2
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "results_dir")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--widths", default="100,400,800", help="decode: key columns attended")
    ap.add_argument(
        "--lengths", default="32,64,128,256,512,1024,2048", help="train: conversation tokens"
    )
    ap.add_argument("--force", action="store_true", help="measure on emulated bf16 too")
    a = ap.parse_args(argv)

    import torch

    from chattune.host.machine import cpu_bf16_supported

    if not (cpu_bf16_supported() or a.force):
        print(
            "attention kernels: skipped, this CPU has no bf16 instructions (bf16 is emulated "
            "here, and chattune attends in fp32 with SDPA's kernels); --force measures anyway"
        )
        return 0
    torch.manual_seed(0)
    decode = [decode_case(int(w), a.rows, a.iters) for w in a.widths.split(",")]
    train = [train_case(int(n), max(5, a.iters // 4)) for n in a.lengths.split(",")]
    print(f"decode attention, bf16, {a.rows} rows (us per call, max error vs fp32):")
    for r in decode:
        print(
            f"  {r['width']:>5} columns: flash {r['flash_us']:.0f} ({r['flash_max_err']}), "
            f"math on views {r['math_views_us']:.0f} ({r['math_views_max_err']}), "
            f"math on contiguous {r['math_contiguous_us']:.0f} ({r['math_contiguous_max_err']})"
        )
    print("training attention, bf16, forward + backward (ms, grad relative error vs fp32):")
    for r in train:
        print(
            f"  {r['length']:>5} tokens: flash {r['flash_ms']:.2f} ({r['flash_grad_rel_err']}), "
            f"math {r['math_ms']:.2f} ({r['math_grad_rel_err']}), "
            f"blocked {r['blocked_ms']:.2f} ({r['blocked_grad_rel_err']}): "
            f"{r['flash_ms'] / r['blocked_ms']:.2f}x flash"
        )
    print("prefill attention, bf16, forward without autograd (ms):")
    for r in train:
        print(
            f"  {r['length']:>5} tokens: flash (GQA) {r['prefill_flash_ms']:.2f}, blocked "
            f"{r['prefill_blocked_ms']:.2f}: {r['prefill_flash_ms'] / r['prefill_blocked_ms']:.2f}x"
        )
    stamp = utc_stamp()
    path = write_result(
        a.results_dir,
        "attention-kernels",
        stamp,
        {
            "benchmark": "attention_kernels",
            "when": stamp,
            "settings": vars(a) | {"results_dir": str(a.results_dir)},
            "decode": decode,
            "train": train,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
