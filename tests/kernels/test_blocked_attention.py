"""The blocked causal attention kernel (CPU bf16) against SDPA, and its place in the packed path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from chattune.errors import InvalidParameter
from chattune.kernels.attention import KERNEL_ENV, attention_kernel, register
from chattune.kernels.blocked_attention import (
    BLOCK,
    MIN_NO_GRAD_TOKENS,
    blocked_causal_attention,
    use_blocked,
)
from chattune.train.packing import PackedCollator

BF16 = torch.bfloat16


def qkv(length: int, heads: int = 9, kv_heads: int = 3, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(heads, length, dim, generator=g),
        torch.randn(kv_heads, length, dim, generator=g),
        torch.randn(kv_heads, length, dim, generator=g),
    )


def reference(q, k, v, grad, dtype, kernel):
    """Output and q/k/v gradients of causal attention in `dtype` by `kernel` (sdpa/blocked)."""
    q, k, v = (x.detach().to(dtype, copy=True).requires_grad_() for x in (q, k, v))
    if kernel == "sdpa":
        groups = q.shape[0] // k.shape[0]
        kr, vr = (x.repeat_interleave(groups, 0) for x in (k, v))
        out = F.scaled_dot_product_attention(q[None], kr[None], vr[None], is_causal=True)[0]
    else:
        out = blocked_causal_attention(q, k, v, q.shape[-1] ** -0.5)
    out.backward(grad.to(dtype))
    return [x.detach().float() for x in (out, q.grad, k.grad, v.grad)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("length", [1, 7, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 44])
@pytest.mark.parametrize("heads", [(9, 3), (4, 4)], ids=["gqa", "mha"])
def test_blocked_matches_fp32_as_well_as_flash(length: int, heads: tuple[int, int]) -> None:
    """Output and all three gradients, in bf16, against fp32 SDPA: no further off than SDPA's
    own bf16 kernel (one block, several, a partial last block; grouped and plain heads)."""
    q, k, v = qkv(length, *heads)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    exact = reference(q, k, v, grad, torch.float32, "sdpa")
    mine = reference(q, k, v, grad, BF16, "blocked")
    flash = reference(q, k, v, grad, BF16, "sdpa")
    for name, m, f, e in zip(("out", "dq", "dk", "dv"), mine, flash, exact, strict=True):
        assert rel(m, e) < max(1.5 * rel(f, e), 0.01), name


def test_blocked_fp32_is_exact_attention() -> None:
    """The arithmetic itself (fp32 in, where rounding is negligible) is causal attention."""
    q, k, v = qkv(3 * BLOCK - 5)
    grad = torch.randn(q.shape)
    for m, e in zip(
        reference(q, k, v, grad, torch.float32, "blocked"),
        reference(q, k, v, grad, torch.float32, "sdpa"),
        strict=True,
    ):
        torch.testing.assert_close(m, e, atol=1e-5, rtol=1e-4)


def test_blocked_is_causal() -> None:
    """Changing the last tokens' keys and values leaves every earlier output unchanged."""
    q, k, v = (x.to(BF16) for x in qkv(2 * BLOCK + 10))
    k2, v2 = k.clone(), v.clone()
    k2[:, -3:] += 5.0
    v2[:, -3:] -= 5.0
    scale = q.shape[-1] ** -0.5
    with torch.no_grad():
        a = blocked_causal_attention(q, k, v, scale)
        b = blocked_causal_attention(q, k2, v2, scale)
    assert torch.equal(a[:, :-3], b[:, :-3])
    assert not torch.equal(a[:, -3:], b[:, -3:])


def test_when_the_blocked_kernel_is_taken() -> None:
    q, k, v = (x.to(BF16) for x in qkv(8))
    assert use_blocked(q[None], k[None], v[None], 8)  # with autograd: at any length
    with torch.no_grad():
        assert not use_blocked(q[None], k[None], v[None], MIN_NO_GRAD_TOKENS - 1)
        assert use_blocked(q[None], k[None], v[None], MIN_NO_GRAD_TOKENS)
    f = [x.float()[None] for x in (q, k, v)]
    assert not use_blocked(*f, 8)  # fp32: SDPA's own products are as fast


def test_attention_kernel_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert attention_kernel() == "auto"
    monkeypatch.setenv(KERNEL_ENV, "SDPA")
    assert attention_kernel() == "sdpa"
    monkeypatch.setenv(KERNEL_ENV, "flash2")
    with pytest.raises(InvalidParameter, match=rf"{KERNEL_ENV}='flash2'.*auto, sdpa"):
        attention_kernel()


def test_packed_bf16_step_same_with_either_kernel(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bf16 training step on a packed row (three conversations, one over a block) through
    the model: the blocked kernel's loss and gradients agree with SDPA's within bf16 rounding,
    and the kernel really ran (counted)."""
    import chattune.kernels.attention as attention

    name = register()
    g = torch.Generator().manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, attn_implementation=name, dtype=BF16
    ).train()
    vocab = model.config.vocab_size
    exs = [
        {"input_ids": (ids := torch.randint(0, vocab, (n,), generator=g).tolist()), "labels": ids}
        for n in (BLOCK + 40, 30, 9)
    ]
    batch = PackedCollator(flash_attn_kwargs=True)(exs)
    calls = []
    real = attention.blocked_causal_attention
    monkeypatch.setattr(
        attention, "blocked_causal_attention", lambda *a: calls.append(a[0].shape) or real(*a)
    )
    results = {}
    for kernel in ("sdpa", "auto"):
        monkeypatch.setenv(KERNEL_ENV, kernel)
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters()])
        results[kernel] = (float(loss.detach()), grads)
    layers = model.config.num_hidden_layers
    assert len(calls) == 3 * layers  # auto only: every conversation of every layer
    (l0, g0), (l1, g1) = results["sdpa"], results["auto"]
    assert abs(l1 - l0) < 0.01 * abs(l0)
    assert rel(g1, g0) < 0.03
