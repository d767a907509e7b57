"""The estimate against real training: peak RSS of a few AdamW steps in a fresh process.

Band: the estimate may overshoot the measured peak by up to 15% (a fit check should err on
the safe side; glibc keeps less of small bf16 runs resident than of large ones) and
undershoot it by at most 8% (an undershoot is an out-of-memory crash). Each SmolLM2 case
also checks that a wrong formula leaves the band: without the logits term, without the
optimizer state, or with fp32 instead of bf16 weights.

Run with `-s` to see the table of measured vs estimated peaks.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chattune.compute.estimate import (
    CPU_IMPORTS_BYTES,
    MIB,
    Breakdown,
    estimate_memory,
    saved_bytes_per_token_layer,
)
from chattune.compute.measure import Measurement, measure_training, trace_layer
from chattune.models.arch import ArchSpec
from chattune.models.card import builtin_cards

pytestmark = pytest.mark.integration

OVER, UNDER = 0.15, 0.08  # SmolLM2: estimate within [-8%, +15%] of the measured peak
# Tiny models: ~30 MiB in all, mostly allocator scratch that moved by up to 15 MiB with machine
# load (CI: -31%, 13 MiB). On a CPU with bf16 instructions the bf16 case also pays oneDNN's
# bf16 kernels and their scratch buffers, a fixed cost of its own: measured 62 MiB against 29
# estimated there (2026-12-03; it passed at 24 MiB of slack twice, failed once). They check the
# path through a real checkpoint; the SmolLM2 cases, 0.45-2.5 GiB, are what hold the estimate
# to its band (SmolLM2 LoRA bf16 within 2% on that machine).
TINY_SLACK_MIB = 48
TINY_TOLERANCE = 0.25
SMOL = builtin_cards()["SmolLM2-135M-Instruct"].config
SMOL4 = SMOL.model_copy(update={"num_hidden_layers": 4})

# name -> (model, estimate/measure settings). SmolLM2 is built from its card's config with
# random weights (same memory as the real ones; nothing to download). bf16 runs 1 step at a
# short length: CPUs without avx512_bf16 run bf16 matmuls ~20x slower than fp32.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-llama LoRA bf16": (
        "tiny",
        dict(lora=True, precision="bf16", max_seq_length=256, batch_size=2),
    ),
    "tiny-llama full fp32": (
        "tiny",
        dict(lora=False, precision="32", max_seq_length=256, batch_size=2),
    ),
    "SmolLM2 LoRA bf16": (
        "smol",
        dict(lora=True, precision="bf16", max_seq_length=64, batch_size=1, steps=1),
    ),
    "SmolLM2 LoRA fp32": (
        "smol",
        dict(lora=True, precision="32", max_seq_length=128, batch_size=2),
    ),
    "SmolLM2 full fp32": (
        "smol",
        dict(lora=False, precision="32", max_seq_length=128, batch_size=1),
    ),
    # SmolLM2's width and vocabulary with 4 of its 30 layers: the logits are most of it
    "SmolLM2-4-layers LoRA fp32": (
        "smol4",
        dict(lora=True, precision="32", max_seq_length=512, batch_size=2),
    ),
}


def _estimate(arch: ArchSpec, settings: dict[str, Any]) -> Breakdown:
    kw = {k: v for k, v in settings.items() if k != "steps"}
    return estimate_memory(arch, **kw).training


def _model_bytes(b: Breakdown) -> int:
    """The estimate minus the imported libraries: what the measurement's delta covers."""
    return b.total - CPU_IMPORTS_BYTES


@pytest.fixture(scope="module")
def measured(tiny_llama_dir: Path) -> dict[str, tuple[Measurement, ArchSpec]]:
    tiny = ArchSpec.from_hf_config(json.loads((tiny_llama_dir / "config.json").read_text()))

    def one(name: str) -> tuple[Measurement, ArchSpec]:
        model, settings = CASES[name]
        if model == "tiny":
            return measure_training(model_dir=tiny_llama_dir, **settings), tiny
        arch = SMOL4 if model == "smol4" else SMOL
        return measure_training(arch=arch, **settings), arch

    # two at a time: each run is its own process, so the peaks do not mix
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(CASES, pool.map(one, CASES), strict=True))
    print("\ncase                         measured   estimated   error")
    for name, (m, arch) in results.items():
        est = _model_bytes(_estimate(arch, CASES[name][1]))
        print(
            f"{name:27s} {m.peak_delta_bytes / MIB:7.0f} MiB {est / MIB:7.0f} MiB "
            f"{100 * (est / m.peak_delta_bytes - 1):+6.1f}%   ({m.seconds:.0f} s)"
        )
    return results


def _error(estimate: int, m: Measurement) -> float:
    return estimate / m.peak_delta_bytes - 1


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("tiny")])
def test_tiny_model_estimate_matches_measured_peak(measured, name: str) -> None:
    m, arch = measured[name]
    assert all(loss > 0 for loss in m.losses)
    estimate = _model_bytes(_estimate(arch, CASES[name][1]))
    err = _error(estimate, m)
    off_mib = abs(estimate - m.peak_delta_bytes) / 2**20
    assert abs(err) <= TINY_TOLERANCE or off_mib <= TINY_SLACK_MIB, (
        f"{name}: estimate off by {err:+.0%} ({off_mib:.0f} MiB)"
    )


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("SmolLM2")])
def test_smollm2_estimate_matches_measured_peak(measured, name: str) -> None:
    m, arch = measured[name]
    settings = CASES[name][1]
    assert m.num_parameters == arch.num_parameters()
    est = _estimate(arch, settings)
    err = _error(_model_bytes(est), m)
    assert -UNDER <= err <= OVER, f"{name}: estimate off by {err:+.1%}"


def test_wrong_formulas_leave_the_band(measured) -> None:
    """The band is narrow enough to catch a missing term."""

    def out_of_band(estimate: int, m: Measurement) -> bool:
        return not -UNDER <= _error(estimate, m) <= OVER

    m, arch = measured["SmolLM2-4-layers LoRA fp32"]
    est = _estimate(arch, CASES["SmolLM2-4-layers LoRA fp32"][1])
    assert out_of_band(_model_bytes(replace(est, logits=0)), m), "logits term not needed?"
    assert out_of_band(_model_bytes(replace(est, logits=est.logits // 3)), m), "one copy?"

    m, arch = measured["SmolLM2 full fp32"]
    est = _estimate(arch, CASES["SmolLM2 full fp32"][1])
    assert out_of_band(_model_bytes(replace(est, optimizer=0)), m), "optimizer term?"

    m, arch = measured["SmolLM2 LoRA bf16"]
    as_fp32 = _estimate(arch, {**CASES["SmolLM2 LoRA bf16"][1], "precision": "32"})
    assert out_of_band(_model_bytes(as_fp32), m), "bf16 weights not 2 bytes?"


def test_runtime_overhead_matches_the_imports(measured) -> None:
    for m, _ in measured.values():
        assert abs(m.baseline_rss_bytes / CPU_IMPORTS_BYTES - 1) < 0.25


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "phi3"])
def test_saved_activation_table_matches_a_traced_layer(model_type: str) -> None:
    """`_SAVED` against what autograd really keeps for one decoder layer (this torch and
    transformers): a new version that saves more fails here."""
    arch = ArchSpec(
        model_type=model_type,
        hidden_size=320,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=5 if model_type == "phi3" else 1,
        intermediate_size=896,
        vocab_size=256,
        max_position_embeddings=512,
        fused_qkv=model_type == "phi3",
        fused_gate_up=model_type == "phi3",
        qkv_bias=model_type == "qwen2",
    )
    for lora in (True, False):
        for precision in ("32", "bf16"):
            traced, allocated = trace_layer(arch, lora=lora, precision=precision)
            table = saved_bytes_per_token_layer(arch, lora=lora, half=precision == "bf16")
            assert table == pytest.approx(traced, rel=0.03), (lora, precision)
            assert allocated >= traced  # everything saved was allocated in the forward
