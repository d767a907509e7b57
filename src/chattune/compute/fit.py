"""Does a model fit a compute? The estimate of `estimate.py` against the machine's memory.

`resolve_arch` turns what a user typed (`--model`) into a shape; `fit_report` estimates
training and serving on a compute and says, per phase, whether it fits and what to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.compute.estimate import MemoryEstimate, Phase, estimate_memory
from chattune.compute.store import Compute, get_compute
from chattune.errors import ModelNotFound
from chattune.host.machine import Machine, local_machine
from chattune.models.arch import ArchSpec
from chattune.models.store import get_model
from chattune.workspace import Workspace


def resolve_arch(ws: Workspace, name_or_path: str) -> tuple[ArchSpec, list[str]]:
    """The shape and LoRA target modules of a model name or a Hugging Face folder.

    A folder with a `config.json` is read directly (LoRA targets: every linear of a block);
    anything else is a model name of the workspace (catalog cards, imported and registered
    versions; the latest version's card).

    Raises:
        ModelNotFound: no such folder or model name; the message lists the known names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ModelNotFound(
                f"{path} has no config.json, so it is not a Hugging Face model folder.",
                fix="pass the folder that holds config.json, or a model name "
                "(chattune model list).",
            )
        arch = ArchSpec.from_hf_config(json.loads(config.read_text()))
        return arch, sorted(arch.layer_linears())

    card = get_model(ws, name_or_path).card
    return card.config, list(card.lora_target_modules)


@dataclass
class PhaseFit:
    """One phase (training or serving) against one device's memory."""

    phase: Phase
    available_bytes: int
    fits: bool
    advice: list[str] = field(default_factory=list)


@dataclass
class FitReport:
    """What `chattune compute fit` prints: the estimate and, per phase, fit and advice."""

    model: str
    compute: Compute
    machine: Machine
    device: str  # "cpu" or "cuda"
    estimate: MemoryEstimate
    training: PhaseFit
    serving: PhaseFit
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        x = self.estimate.inputs

        def phase(p: PhaseFit) -> dict[str, Any]:
            b = self.estimate.breakdown(p.phase)
            return {
                "total_bytes": b.total,
                "peak_moment": b.moment,
                "breakdown_bytes": dict(b.items()),
                "available_bytes": p.available_bytes,
                "fits": p.fits,
                "advice": p.advice,
            }

        return {
            "model": self.model,
            "compute": self.compute.name,
            "size": self.compute.size,
            "device": self.device,
            "inputs": {
                "lora": x.lora,
                "lora_r": x.lora_r,
                "lora_targets": list(x.lora_targets),
                "precision": x.precision,
                "max_seq_length": x.max_seq_length,
                "batch_size": x.batch_size,
                "deepspeed_stage": x.deepspeed_stage,
                "gpus": x.gpus,
                "gradient_checkpointing": x.gradient_checkpointing,
            },
            "num_parameters": self.estimate.num_parameters,
            "trainable_parameters": self.estimate.trainable_parameters,
            "training": phase(self.training),
            "serving": phase(self.serving),
            "notes": self.notes,
        }


def fit_report(
    ws: Workspace,
    model: str,
    *,
    compute: str = "local",
    lora: bool = True,
    lora_r: int = 8,
    precision: str = "32",
    max_seq_length: int | None = None,
    batch_size: int = 1,
    deepspeed_stage: int | None = None,
    gpus: int = 0,
    gradient_checkpointing: bool = False,
    machine: Machine | None = None,
) -> FitReport:
    """Estimate fine-tuning and serving `model` on `compute`, and judge the fit.

    Memory per device: free RAM now on CPU (`gpus == 0`); each GPU's total memory otherwise.
    `max_seq_length` None (or -1) is the model's context, as the pipeline's -1 is.

    Raises:
        ModelNotFound, ComputeNotFound, InvalidParameter: as their names say.
    """
    arch, targets = resolve_arch(ws, model)
    target = get_compute(ws, compute)
    machine = machine or local_machine()
    seq = arch.max_position_embeddings if max_seq_length in (None, -1) else max_seq_length
    est = estimate_memory(
        arch,
        lora=lora,
        lora_r=lora_r,
        lora_targets=targets,
        precision=precision,
        max_seq_length=seq,
        batch_size=batch_size,
        deepspeed_stage=deepspeed_stage,
        gpus=gpus,
        gradient_checkpointing=gradient_checkpointing,
    )
    notes = list(est.notes)
    available = machine.device_memory_bytes(gpus)
    if gpus > len(machine.gpus):
        notes.append(
            f"--gpus {gpus} but this machine has {len(machine.gpus)} GPU(s): nothing to run on."
        )
    if gpus == 0 and precision in ("16", "bf16") and not machine.cpu_bf16:
        notes.append(
            "this CPU has no bf16 instructions (avx512_bf16/amx_bf16): bf16 saves memory but "
            "trains many times slower than fp32 here."
        )
    if max_seq_length in (None, -1):
        notes.append(
            f"--max-seq-length defaults to the model's context ({seq}), as the pipeline's -1 "
            "does; packed training fills it, so this is the largest case."
        )

    def judge(phase: Phase) -> PhaseFit:
        return PhaseFit(
            phase, available, est.fits(available, phase=phase), est.advice(available, phase=phase)
        )

    return FitReport(
        model=model,
        compute=target,
        machine=machine,
        device="cuda" if gpus else "cpu",
        estimate=est,
        training=judge("training"),
        serving=judge("serving"),
        notes=notes,
    )
