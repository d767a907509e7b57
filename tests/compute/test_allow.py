from __future__ import annotations

from dataclasses import replace

from chattune.compute.allow import (
    ALLOW_LIST_SEQ_LENGTH,
    allow_lists,
    capacity_bytes,
    finetune_estimate,
    inference_estimate,
)
from chattune.compute.estimate import GIB
from chattune.compute.store import AZURE_GPU_SIZES, create_compute, known_sizes
from chattune.host.machine import local_machine
from chattune.models.card import builtin_cards

CARDS = builtin_cards()


def test_lists_follow_the_estimate_on_this_machine(workspace) -> None:
    machine = local_machine()
    limit = capacity_bytes(machine)
    for name in ("Phi-3-mini-4k-instruct", "SmolLM2-135M-Instruct"):
        card = CARDS[name]
        finetune, inference = allow_lists(workspace, card, machine)
        fits_ft = finetune_estimate(card, machine).training.total <= limit
        fits_inf = inference_estimate(card, machine).total <= limit
        assert finetune == (known_sizes(workspace) if fits_ft else [])
        assert inference == (known_sizes(workspace) if fits_inf else [])


def test_smollm2_fits_and_phi3_does_not_on_a_24_gib_cpu_box(workspace) -> None:
    # The machine the seed's question is about: 2 cores, 24 GiB, no GPU.
    box = replace(local_machine(), gpus=(), ram_total_bytes=24 * GIB, logical_cores=2)
    smol_ft, smol_inf = allow_lists(workspace, CARDS["SmolLM2-135M-Instruct"], box)
    phi_ft, phi_inf = allow_lists(workspace, CARDS["Phi-3-mini-4k-instruct"], box)
    assert smol_ft == ["local", *AZURE_GPU_SIZES] == smol_inf
    assert phi_ft == []  # LoRA bf16 at 2048 tokens: ~23 GiB on CPU, over 90% of 24 GiB
    assert phi_inf == ["local", *AZURE_GPU_SIZES]  # bf16 weights + a 4k KV cache: ~8.4 GiB
    est = finetune_estimate(CARDS["Phi-3-mini-4k-instruct"], box)
    # the card's model_specific_defaults are what the estimate used
    assert est.inputs.lora and est.inputs.precision == "16"
    assert est.inputs.max_seq_length == ALLOW_LIST_SEQ_LENGTH
    assert est.inputs.deepspeed_stage is None  # DeepSpeed needs GPUs


def test_lists_name_every_size_of_the_workspace(workspace) -> None:
    create_compute(workspace, "gpu-cluster", "Standard_NC6s_v3")
    create_compute(workspace, "gpu-two", "Standard_NC6s_v3")
    big = replace(local_machine(), gpus=(), ram_total_bytes=512 * GIB)
    finetune, inference = allow_lists(workspace, CARDS["SmolLM2-135M-Instruct"], big)
    assert finetune == ["local", *AZURE_GPU_SIZES] == inference  # NC6s_v3 listed once
    small = replace(big, ram_total_bytes=1 * GIB)
    assert allow_lists(workspace, CARDS["SmolLM2-135M-Instruct"], small) == ([], [])
