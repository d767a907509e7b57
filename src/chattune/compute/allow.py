"""Compute allow lists: the sizes of the workspace's computes a model fits on.

Azure tags a registry model with `finetune_compute_allow_list` and
`inference_compute_allow_list`; the seed reads them to pick a compute. Here they follow
the memory estimate on the machine that runs every compute (this one), so a list is either
every known size (the workspace's and Azure's allow-listed GPU sizes) or none of them.

- Fine-tuning: the pipeline's defaults with the model's `model_specific_defaults` on top
  (`apply_lora`, `precision`, `gradient_checkpointing`, DeepSpeed where there are GPUs,
  `per_device_train_batch_size`), one process per GPU of this machine (the seed passes
  the compute's GPU count), at `min(context, ALLOW_LIST_SEQ_LENGTH)` tokens per sequence.
- Inference: bf16 weights plus the KV cache of one request at the model's full context.

CPU RAM counts at `RAM_HEADROOM` of its total: the OS and other processes need some, and
the estimate is calibrated to about +-10%. A GPU counts at its total memory (the estimate
already includes the CUDA context).
"""

from __future__ import annotations

from chattune.compute.estimate import Breakdown, MemoryEstimate, estimate_memory, estimate_serving
from chattune.compute.store import known_sizes
from chattune.host.machine import Machine, local_machine
from chattune.models.card import ModelCard
from chattune.models.store import ModelVersion
from chattune.train.params import parse_params
from chattune.workspace import Workspace

# A long chat conversation. The pipeline's default max_seq_length (-1) is the model's
# context, which packing fills; `chattune compute fit` shows that case.
ALLOW_LIST_SEQ_LENGTH = 2048
RAM_HEADROOM = 0.9


def finetune_estimate(card: ModelCard, machine: Machine) -> MemoryEstimate:
    """The estimate behind the fine-tuning allow list (see the module docstring)."""
    p = parse_params({}, card.model_specific_defaults)
    gpus = len(machine.gpus)
    stage = int(p.deepspeed_stage) if (p.apply_deepspeed and gpus) else None
    return estimate_memory(
        card.config,
        lora=p.apply_lora,
        lora_r=p.lora_r,
        lora_targets=list(card.lora_target_modules),
        precision=p.precision,
        max_seq_length=min(card.context_length, ALLOW_LIST_SEQ_LENGTH),
        batch_size=p.per_device_train_batch_size,
        deepspeed_stage=stage,
        gpus=gpus,
        gradient_checkpointing=p.gradient_checkpointing,
    )


def inference_estimate(card: ModelCard, machine: Machine) -> Breakdown:
    """The estimate behind the inference allow list: bf16, one request, full context."""
    return estimate_serving(
        card.config, precision="bf16", batch_size=1, gpus=1 if machine.gpus else 0
    )


def capacity_bytes(machine: Machine) -> int:
    """Memory one process may plan on: the smallest GPU, else `RAM_HEADROOM` of the RAM."""
    if machine.gpus:
        return min(g.total_memory_bytes for g in machine.gpus)
    return int(machine.ram_total_bytes * RAM_HEADROOM)


def allow_lists(
    ws: Workspace, card: ModelCard, machine: Machine | None = None
) -> tuple[list[str], list[str]]:
    """(finetune sizes, inference sizes): the sizes (`known_sizes`: `local`, the
    workspace's, Azure's allow-listed GPU sizes) on which `card`'s model fits, each once.

    Example:
        >>> allow_lists(ws, builtin_cards()["SmolLM2-135M-Instruct"])[0][:2]
        ['local', 'Standard_NC6s_v3']
    """
    machine = machine or local_machine()
    sizes = known_sizes(ws)
    limit = capacity_bytes(machine)
    finetune = finetune_estimate(card, machine).training.total <= limit
    inference = inference_estimate(card, machine).total <= limit
    return (sizes if finetune else [], sizes if inference else [])


def with_tags(ws: Workspace, mv: ModelVersion) -> ModelVersion:
    """`mv` with the Azure-style tags filled in: `model_specific_defaults` and the compute
    allow lists (as strings `ast.literal_eval` parses; the lists follow the memory estimate
    on this workspace's computes), plus the version's own tags on top."""
    finetune, inference = allow_lists(ws, mv.card)
    tags = {
        "task": "chat-completion",
        "license": mv.card.license,
        "model_specific_defaults": repr(mv.card.model_specific_defaults),
        "finetune_compute_allow_list": repr(finetune),
        "inference_compute_allow_list": repr(inference),
        **mv.tags,
    }
    return ModelVersion(**{**mv.__dict__, "tags": tags})
