from __future__ import annotations

import pytest

from chattune.compute.estimate import (
    GIB,
    MIB,
    estimate_memory,
    estimate_serving,
    saved_bytes_per_token_layer,
)
from chattune.errors import InvalidParameter
from chattune.models.card import builtin_cards

SMOL = builtin_cards()["SmolLM2-135M-Instruct"].config
PHI3 = builtin_cards()["Phi-3-mini-4k-instruct"].config


def test_breakdown_adds_up() -> None:
    est = estimate_memory(SMOL, lora=False, precision="32", max_seq_length=512, batch_size=2)
    for b in (est.training, est.serving):
        assert b.total == sum(v for _, v in b.items())
        assert b.total > 0
    assert est.training.optimizer >= 8 * SMOL.num_parameters()  # AdamW: 2 fp32 moments
    assert est.serving.gradients == est.serving.optimizer == 0
    assert est.serving.kv_cache > 0 and est.training.kv_cache == 0


def test_weights_follow_precision() -> None:
    n = SMOL.num_parameters()
    lora32 = estimate_memory(SMOL, lora=True, precision="32", max_seq_length=64)
    lora16 = estimate_memory(SMOL, lora=True, precision="bf16", max_seq_length=64)
    t = lora32.trainable_parameters
    assert lora32.training.weights == 4 * n + 4 * t  # fp32 frozen base + fp32 adapters
    assert lora16.training.weights == 2 * n + 4 * t  # bf16 frozen base + fp32 adapters
    assert lora16.serving.weights == 2 * n and lora32.serving.weights == 4 * n


def test_lora_needs_less_than_full() -> None:
    # short sequences: weights and optimizer state dominate. (On CPU, LoRA's fp32
    # activations cost more than full fine-tuning's, so at long sequences this can flip.)
    kw = dict(precision="32", max_seq_length=256, batch_size=1)
    lora = estimate_memory(PHI3, lora=True, **kw)
    full = estimate_memory(PHI3, lora=False, **kw)
    assert lora.trainable_parameters < full.trainable_parameters / 100
    assert lora.training.total < full.training.total / 2


def test_zero3_lt_zero2_lt_no_zero_per_gpu() -> None:
    kw = dict(lora=False, precision="16", max_seq_length=2048)
    plain = estimate_memory(PHI3, gpus=2, **kw).training.total
    zero2 = estimate_memory(PHI3, gpus=2, deepspeed_stage=2, **kw).training.total
    zero3 = estimate_memory(PHI3, gpus=2, deepspeed_stage=3, **kw).training.total
    assert zero3 < zero2 < plain
    # ZeRO paper: 2 + 2 + 12 bytes per parameter; stage 3 with 2 GPUs halves them all
    n = PHI3.num_parameters()
    z3 = estimate_memory(PHI3, gpus=2, deepspeed_stage=3, **kw).training
    assert z3.weights + z3.gradients + z3.optimizer < 16 * n / 2 + 2 * GIB


def test_longer_sequences_need_more_activation_memory() -> None:
    short = estimate_memory(SMOL, lora=True, max_seq_length=256)
    long = estimate_memory(SMOL, lora=True, max_seq_length=1024)
    assert long.training.activations == pytest.approx(4 * short.training.activations)
    assert long.training.logits == 4 * short.training.logits
    assert long.serving.kv_cache == 4 * short.serving.kv_cache


def test_gradient_checkpointing_saves_activation_memory() -> None:
    for gpus in (0, 1):
        off = estimate_memory(SMOL, lora=True, max_seq_length=2048, gpus=gpus)
        on = estimate_memory(
            SMOL, lora=True, max_seq_length=2048, gpus=gpus, gradient_checkpointing=True
        )
        assert on.training.activations < off.training.activations / 2


def test_logits_term_is_three_fp32_copies() -> None:
    est = estimate_memory(SMOL, lora=True, max_seq_length=100, batch_size=3)
    assert est.training.logits == 3 * 3 * 100 * SMOL.vocab_size * 4


def test_saved_activation_table_is_near_korthikanti_order() -> None:
    # Korthikanti et al. count 34*h bytes per token per layer for a 16-bit GPT block; a
    # Llama block with a 2.67h SwiGLU MLP lands in the same range.
    per_h = saved_bytes_per_token_layer(SMOL, lora=True, half=True) / SMOL.hidden_size
    assert 30 < per_h < 90


def test_advice_names_the_flags_and_each_fix_fits() -> None:
    est = estimate_memory(PHI3, lora=False, precision="32", max_seq_length=256, batch_size=2)
    available = 24 * GIB
    assert not est.fits(available)
    advice = est.advice(available)
    text = "\n".join(advice)
    assert "use --lora" in text
    assert "GPU with at least" in text
    assert estimate_memory(PHI3, lora=True, precision="32", max_seq_length=256, batch_size=2).fits(
        available
    )
    assert est.advice(1000 * GIB) == []


def test_advice_max_seq_length_is_the_largest_that_fits() -> None:
    est = estimate_memory(SMOL, lora=True, precision="32", max_seq_length=2048, batch_size=4)
    available = 8 * GIB
    advice = est.advice(available)
    assert any(a.startswith("lower --batch-size to") for a in advice), advice
    line = next(a for a in advice if a.startswith("lower --max-seq-length"))
    seq = int(line.split("to ")[1].split()[0])
    kw = dict(lora=True, precision="32", batch_size=4)
    assert estimate_memory(SMOL, max_seq_length=seq, **kw).fits(available)
    assert not estimate_memory(SMOL, max_seq_length=seq + 1, **kw).fits(available)


def test_advice_combines_changes_when_no_single_one_fits() -> None:
    est = estimate_memory(PHI3, lora=False, precision="32", max_seq_length=4096)
    advice = est.advice(16 * GIB)
    combo = next(a for a in advice if a.startswith("together:"))
    assert "--lora" in combo and "--precision bf16" in combo
    assert not any(a.startswith("use --lora") for a in advice)  # alone it is not enough


def test_advice_on_gpus_suggests_zero3() -> None:
    est = estimate_memory(PHI3, lora=False, precision="bf16", max_seq_length=2048, gpus=1)
    advice = est.advice(40 * GIB)
    assert any("--deepspeed-stage 3 with --gpus" in a for a in advice), advice


def test_serving_advice_for_a_long_context() -> None:
    phi128 = builtin_cards()["Phi-3-mini-128k-instruct"].config
    serving = estimate_serving(phi128)  # bf16, one request at the full 128k context
    assert serving.kv_cache > 40 * GIB
    est = estimate_memory(phi128, lora=True, precision="bf16", max_seq_length=131072)
    advice = est.advice(16 * GIB, phase="serving")
    assert any(a.startswith("lower --max-seq-length") for a in advice)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"precision": "8"}, "--precision"),
        ({"max_seq_length": 0}, "--max-seq-length"),
        ({"batch_size": 0}, "--batch-size"),
        ({"deepspeed_stage": 1, "gpus": 2}, "--deepspeed-stage"),
        ({"deepspeed_stage": 3}, "--deepspeed-stage needs GPUs"),
        ({"lora_targets": ["qkv_proj"]}, "LoRA targets"),
    ],
)
def test_invalid_values_name_their_flag(kwargs: dict, flag: str) -> None:
    base = {"lora": True, "max_seq_length": 128}
    with pytest.raises(InvalidParameter) as err:
        estimate_memory(SMOL, **{**base, **kwargs})
    assert flag in err.value.message


def test_cpu_estimate_includes_the_runtime() -> None:
    est = estimate_memory(SMOL, lora=True, max_seq_length=16)
    assert 300 * MIB < est.training.overhead < 1 * GIB
