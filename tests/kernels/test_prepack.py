"""The CPU serving fast paths: oneDNN-packed linear weights and the decode-step attention.

Both must leave what the model computes unchanged: packed bf16 linears bit for bit, packed
fp32 ones up to summation order; the decode attention bit for bit against transformers' sdpa
on a padded batch, and within float noise without padding (where sdpa takes another kernel).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from chattune.host.machine import cpu_bf16_supported
from chattune.kernels import prepack
from chattune.kernels.attention import decode_attention_forward
from chattune.kernels.prepack import PackedLinear, packed_count, prepack_linears
from chattune.models.checkpoint import resolve_checkpoint
from chattune.models.loading import load_model, load_tokenizer
from chattune.serving.model_server.engine import Engine, SamplingParams

DTYPES = [torch.float32] + ([torch.bfloat16] if cpu_bf16_supported() else [])
CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 3, 16, 200])
def test_packed_linear_computes_what_linear_does(dtype: torch.dtype, rows: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 160, bias=True).to(dtype)
    packed = PackedLinear(linear, batch_hint=16)
    with torch.inference_mode():
        for x in (torch.randn(rows, 96, dtype=dtype), torch.randn(2, rows, 96, dtype=dtype)):
            want, got = linear(x), packed(x)
            assert got.shape == want.shape and got.dtype == dtype
            if dtype == torch.bfloat16:
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _logits(model, ids: torch.Tensor, **kw) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, **kw).logits.float()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_load_model_packs_every_linear_and_keeps_the_logits(chatty_llama_dir, dtype) -> None:
    ckpt = resolve_checkpoint(chatty_llama_dir)
    plain, _ = load_model(ckpt, device=CPU, dtype=dtype, prepack=False)
    model, _ = load_model(ckpt, device=CPU, dtype=dtype)
    linears = sum(type(m) is nn.Linear for m in plain.modules())
    assert linears > 0 and packed_count(plain) == 0
    assert packed_count(model) == linears
    assert not any(type(m) is nn.Linear for m in model.modules())
    ids = torch.randint(0, plain.config.vocab_size, (3, 17))
    want, got = _logits(plain, ids), _logits(model, ids)
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_lora_matrices_stay_plain_and_mixed_batches_agree(chatty_llama_dir, llama_adapters):
    ckpt = resolve_checkpoint(chatty_llama_dir)
    plain, names = load_model(ckpt, llama_adapters, device=CPU, dtype=torch.float32, prepack=False)
    model, _ = load_model(ckpt, llama_adapters, device=CPU, dtype=torch.float32)
    lora = [n for n, m in model.named_modules() if "lora_A" in n and type(m) is nn.Linear]
    assert lora, "the LoRA A matrices are plain nn.Linear (PEFT reads their .weight)"
    assert not any(isinstance(m, PackedLinear) for n, m in model.named_modules() if "lora_" in n)
    assert packed_count(model) > 0
    ids = torch.randint(0, plain.config.vocab_size, (3, 11))
    kw = {"adapter_names": [names[0], "__base__", names[1]]}
    torch.testing.assert_close(_logits(model, ids, **kw), _logits(plain, ids, **kw))
    # the adapters change the answer: the comparison above saw them
    base = _logits(model, ids, adapter_names=["__base__"] * 3)
    assert not torch.allclose(_logits(model, ids, **kw)[0], base[0])


def test_without_the_ops_nothing_is_packed(chatty_llama_dir, monkeypatch) -> None:
    monkeypatch.setattr(prepack, "_ops_available", lambda dtype: False)
    model, _ = load_model(resolve_checkpoint(chatty_llama_dir), device=CPU, dtype=torch.float32)
    assert packed_count(model) == 0
    assert prepack_linears(nn.Sequential(nn.ReLU())) == 0


def test_a_packed_layer_that_disagrees_is_not_used(chatty_llama_dir, monkeypatch) -> None:
    monkeypatch.setattr(prepack, "_matches", lambda linear, packed: False)
    model, _ = load_model(resolve_checkpoint(chatty_llama_dir), device=CPU, dtype=torch.float32)
    assert packed_count(model) == 0


# -- decode attention -------------------------------------------------------------------------
class _Module:
    num_key_value_groups = 3
    is_causal = True
    training = False


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("padded", [True, False])
def test_decode_attention_equals_transformers_sdpa(dtype: torch.dtype, padded: bool) -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    b, h, kv, t, d = 5, 9, 3, 37, 16
    q = torch.randn(b, h, 1, d, dtype=dtype)
    k, v = torch.randn(b, kv, t, d, dtype=dtype), torch.randn(b, kv, t, d, dtype=dtype)
    mask = None
    if padded:  # left padding as the engine's batch has it
        lens = torch.tensor([37, 5, 20, 1, 30])
        mask = (torch.arange(t)[None] >= (t - lens)[:, None])[:, None, None, :]
    want, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=d**-0.5)
    got, _ = decode_attention_forward(_Module(), q, k, v, mask, scaling=d**-0.5)
    assert got.shape == want.shape == (b, 1, h, d)
    if padded:  # the same kernel on the same stacked query as transformers' sdpa
        assert torch.equal(got, want)
    else:  # sdpa's GQA kernel here: the same attention up to summation order
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # and what attention means: row 3 attends to its one real key only
    if padded:
        torch.testing.assert_close(got[3, 0, :3].float(), v[3, 0, -1].float().expand(3, d))


def _engine_tokens(model_dir: Path, **kw) -> list[list[int]]:
    ckpt = resolve_checkpoint(model_dir)
    model, _ = load_model(ckpt, device=CPU, dtype=torch.float32, prepack=kw.pop("prepack"))
    engine = Engine(model, load_tokenizer(ckpt), max_batch_size=4, **kw)
    try:
        prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
        handles = [engine.submit(p, SamplingParams(max_new_tokens=12)) for p in prompts]
        for h in handles:
            h.text()
        alone = engine.submit(prompts[0], SamplingParams(max_new_tokens=12))  # no padding
        alone.text()
        return [h.token_ids for h in [*handles, alone]]
    finally:
        engine.stop()


def test_the_fast_paths_decode_the_same_tokens(chatty_llama_dir, monkeypatch) -> None:
    from chattune.kernels import attention

    calls: list[int] = []

    def counted(*args, **kw):
        calls.append(args[1].shape[0])
        return decode_attention_forward(*args, **kw)

    monkeypatch.setattr(attention, "decode_attention_forward", counted)
    slow = _engine_tokens(chatty_llama_dir, prepack=False, decode_attention=False)
    assert not calls
    fast = _engine_tokens(chatty_llama_dir, prepack=True, decode_attention=True)
    assert calls and max(calls) == 3 and min(calls) == 1  # batched steps and the lone one
    assert fast == slow
    assert fast[0] == fast[-1]  # batched and alone
    assert len({tuple(t) for t in fast[:3]}) == 3


# -- decode buckets ---------------------------------------------------------------------------
def test_decode_buckets_split_long_from_short_rows() -> None:
    from chattune.serving.model_server.engine import decode_buckets

    assert decode_buckets([500, 480, 60, 50]) == ((0, 2, 500), (2, 4, 60))
    assert decode_buckets([100, 90, 80]) == ((0, 3, 100),)  # not worth another call
    assert decode_buckets([7]) == ((0, 1, 7),)
    # any order is covered exactly: each run is as wide as its widest row
    runs = decode_buckets([60, 500, 50, 480], overhead=0)
    assert [r[:2] for r in runs] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [r[2] for r in runs] == [60, 500, 50, 480]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bucketed_decode_attention_equals_one_call(dtype: torch.dtype) -> None:
    from chattune.serving.model_server.engine import decode_buckets

    torch.manual_seed(0)
    b, h, kv, t, d = 6, 9, 3, 600, 16
    lens = [600, 590, 120, 100, 9, 1]  # longest first, left-padded as the engine keeps them
    q = torch.randn(b, h, 1, d, dtype=dtype)
    k, v = torch.randn(b, kv, t, d, dtype=dtype), torch.randn(b, kv, t, d, dtype=dtype)
    mask = (torch.arange(t)[None] >= (t - torch.tensor(lens))[:, None])[:, None, None, :]
    runs = decode_buckets(lens)
    assert len(runs) > 1
    one, _ = decode_attention_forward(_Module(), q, k, v, mask)
    got, _ = decode_attention_forward(_Module(), q, k, v, mask, decode_buckets=runs)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got, one, rtol=tol, atol=tol)


def _tokens(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    handles = [engine.submit(p, SamplingParams(max_new_tokens=10)) for p in prompts]
    for h in handles:
        h.text()
    return [h.token_ids for h in handles]


def test_the_engine_keeps_rows_longest_first_and_attends_in_runs(
    chatty_llama_dir, monkeypatch
) -> None:
    from chattune.kernels import attention

    seen: list[tuple] = []

    def spy(*args, decode_buckets=None, **kw):
        if decode_buckets:
            seen.append(tuple(decode_buckets))
        return decode_attention_forward(*args, decode_buckets=decode_buckets, **kw)

    monkeypatch.setattr(attention, "decode_attention_forward", spy)
    ckpt = resolve_checkpoint(chatty_llama_dir)
    model, _ = load_model(ckpt, device=CPU, dtype=torch.float32)
    tok = load_tokenizer(ckpt)
    # two short prompts and two long ones, in mixed order
    prompts = [[5, 6], list(range(5, 205)), [7, 8, 9], list(range(30, 220))]
    alone = Engine(model, tok, max_batch_size=1)
    try:
        want = _tokens(alone, prompts)  # one row at a time: no padding, no runs
    finally:
        alone.stop()
    assert not seen
    batched = Engine(model, tok, max_batch_size=4)
    try:
        got = _tokens(batched, prompts)
    finally:
        batched.stop()
    assert got == want
    # sorted longest first, the two long rows attend apart from the two short ones
    assert seen, "no step attended in runs"
    assert all(r[0][:2] == (0, 2) for r in seen if len(r) == 2), seen


def test_the_decode_attention_stays_off_where_it_was_not_measured(chatty_llama_dir) -> None:
    from chattune.kernels.attention import SERVING_ATTENTIONS

    ckpt = resolve_checkpoint(chatty_llama_dir)
    model, _ = load_model(ckpt, device=CPU, dtype=torch.float32, prepack=False)
    engine = Engine(model.to("meta"), load_tokenizer(ckpt))  # not a CPU: as a GPU would be
    try:
        assert not engine._buckets
        assert model.config._attn_implementation == SERVING_ATTENTIONS[True, False]
    finally:
        engine.stop()
    cpu, _ = load_model(ckpt, device=CPU, dtype=torch.float32, prepack=False)
    engine = Engine(cpu, load_tokenizer(ckpt))
    try:
        assert engine._buckets
        assert cpu.config._attn_implementation == SERVING_ATTENTIONS[True, True]
    finally:
        engine.stop()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_packed_prefill_reads_gqa_heads_in_place_with_the_same_result(dtype) -> None:
    from chattune.kernels import attention

    torch.manual_seed(0)
    lens = [5, 17, 1, 30]
    cu = torch.tensor([0, 5, 22, 23, 53], dtype=torch.int32)
    q = torch.randn(1, 9, sum(lens), 16, dtype=dtype)
    k, v = (
        torch.randn(1, 3, sum(lens), 16, dtype=dtype),
        torch.randn(1, 3, sum(lens), 16, dtype=dtype),
    )
    calls: list[dict] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        mp.setenv(attention.KERNEL_ENV, "sdpa")  # SDPA's path (bf16 would take the blocked one)
        with torch.no_grad():  # a prefill: GQA mode
            fast, _ = attention.packed_sdpa_forward(_Module(), q, k, v, None, cu_seq_lens_q=cu)
        assert calls and all(c.get("enable_gqa") for c in calls)
        calls.clear()
        slow, _ = attention.packed_sdpa_forward(  # autograd on: heads copied
            _Module(), q.requires_grad_(), k, v, None, cu_seq_lens_q=cu
        )
        assert calls and not any(c.get("enable_gqa") for c in calls)
    assert torch.equal(fast, slow.detach())
