"""Peak memory per device for fine-tuning and for serving a decoder-only transformer.

The formula
===========
Notation: N parameters, T trainable parameters, L layers, h hidden size, kv the key/value
width (kv heads x head dim), i the MLP width, V the vocabulary, b batch size, s sequence
length, g GPUs. Bytes per parameter: fp32 4, fp16/bf16 2.

Training, one device
--------------------
What chattune's finetune step does (and `measure.py` reproduces):
- LoRA loads the frozen base in the training dtype: fp32 for precision "32"; bf16 for "bf16",
  and for "16" on CPU (fp16 on CPU becomes bf16); fp16 for "16" on CUDA. The adapters, their
  gradients and their AdamW state are fp32: 4 + 4 + 8 = 16 bytes per trainable parameter.
- Full fine-tuning keeps fp32 weights (4N), fp32 gradients (4N) and AdamW's two moments (8N);
  with precision "16"/"bf16" the forward runs under autocast, whose cache keeps a 16-bit
  copy of every weight until the backward (+2N).
- DeepSpeed (GPUs only), as in the ZeRO paper (Rajbhandari et al. 2020): with "16"/"bf16"
  the weights and gradients are 16-bit (2N + 2N) and the optimizer keeps fp32 master weights
  and the moments (12N). ZeRO-2 divides gradients and optimizer state by g; ZeRO-3 also the
  weights, plus the two largest layers gathered whole at a time.
- Activations: b * s * L * A bytes, A the bytes a decoder layer saves per token for the
  backward. Korthikanti et al. (2022) give A = h * (34 + 5 * a * s / h) for a 16-bit GPT
  block with a 4h MLP and dropout; HF Llama/Qwen2/Phi-3 blocks differ (SwiGLU MLP of width i,
  GQA, RMSNorm computed in fp32, no dropout, SDPA attention that keeps no s x s scores), so A
  here is A = c_h * h + c_kv * kv + c_i * i with coefficients counted by tracing one real
  decoder layer (`measure.trace_layer`: every tensor autograd saves, deduplicated), per
  family and per (LoRA | full) x (fp32 | 16-bit) - see `_SAVED`. For SmolLM2 fp32 LoRA that
  is 40.7 KB per token per layer (= 17.7 fp32 values per hidden unit; Korthikanti's 16-bit
  34 h is 17 values).
  On CPU, glibc malloc keeps the forward's freed temporaries resident (they sit in heap
  holes), so resident RSS is A times `_CPU_RESIDENCY` (measured: 1.25 full fp32, 2.0 LoRA
  fp32, 1.3 for 16-bit). On CUDA, `max_memory_allocated` counts live tensors: factor 1.
  Gradient checkpointing keeps each layer's input (b*s*h per layer) and recomputes one
  layer at a time; on CPU the heap holes of the forward still hold ~35% of the
  non-checkpointed activations (measured), which is what dominates there.
- Logits: b * s * V * 4 bytes times 3: the loss upcasts logits to fp32, cross-entropy keeps
  its log-softmax output, and the backward holds the NLL gradient and the log-softmax
  gradient at once. Full fine-tuning also holds the LM head's gradient (V * h * 4) then.
- Peak = the larger of two moments: the start of the backward (weights + optimizer state +
  activations + logits + the gradients made first) and the optimizer step (weights + all
  gradients + optimizer state + AdamW's temporaries: on CPU, two fp32 copies of the largest
  parameter (single-tensor AdamW) plus 40% of the gradients in heap slack (measured); on
  CUDA, the foreach implementation's one fp32 copy of all trainable parameters).
- Runtime overhead: a CPU process with torch, transformers and peft imported holds ~400 MiB
  (measured 392 MiB) plus ~24 MiB of kernels' scratch; a CUDA process holds ~512 MiB of
  context and cuBLAS workspace outside `max_memory_allocated`.

Serving, one device
-------------------
weights (2N in bf16/fp16, 4N in fp32) + KV cache 2 * L * kv * b * s * bytes + one layer's
prefill temporaries b * s * (3i + 4h) * bytes + last-token logits b * V * 4 * 2 + the runtime.

Calibration (2-core AMD EPYC, 23.5 GiB, torch 2.13 CPU, transformers 5.24, peft 0.21,
default glibc malloc; `measure.py`): the estimate minus the imports is within -5% .. +5% of
the measured peak RSS for SmolLM2-135M (LoRA fp32 at 128 to 2048 tokens, with and without
gradient checkpointing; full fp32 and full bf16; LoRA bf16 at 512 tokens), Qwen2.5-0.5B
(LoRA and full fp32), 4-layer Phi-3-mini and Llama-3.2-1B (LoRA fp32); small LoRA bf16 runs
(64-128 tokens) come out up to 13% high. Repeated runs of one case vary by about 5%. CUDA
numbers follow the textbook accounting above and are not measured (no GPU here).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from chattune.errors import InvalidParameter
from chattune.models.arch import ArchSpec

GIB = 2**30
MIB = 2**20
PRECISIONS = ("32", "16", "bf16")
Phase = Literal["training", "serving"]

# Bytes one decoder layer saves for the backward, per token: (c_h, c_kv, c_i) for
# c_h*h + c_kv*kv + c_i*i. Traced with torch 2.13 / transformers 5.24 / peft 0.21 (SDPA
# attention, LoRA on every linear, r=8) by `measure.trace_layer` on six shapes per row and
# fitted (exactly linear; max residual < 1%). Phi-3 fuses qkv and gate_up, and has kv = h
# in its released sizes, so its h and kv columns share the count.
_SAVED: dict[tuple[str, str], tuple[float, float, float]] = {
    ("llama", "lora32"): (25.1, 8.4, 16.2),
    ("llama", "full32"): (32.8, 8.3, 16.2),
    ("llama", "lora16"): (36.7, 4.2, 10.2),
    ("llama", "full16"): (30.8, 4.3, 8.2),  # autocast: matmul outputs 16-bit, norms fp32
    ("phi3", "lora32"): (22.6, 22.6, 16.2),
    ("phi3", "full32"): (26.5, 26.5, 16.1),
    ("phi3", "lora16"): (16.4, 16.4, 10.1),
    ("phi3", "full16"): (17.5, 17.5, 8.1),
}
# Resident RSS per saved byte on CPU with glibc malloc (measured, see module docstring).
_CPU_RESIDENCY = {"lora32": 2.0, "full32": 1.25, "lora16": 1.3, "full16": 1.3}
_CPU_CHECKPOINT_RETENTION = 0.35  # share of non-checkpointed activations still resident
_CPU_OPTIMIZER_SLACK = 0.4  # heap slack during the optimizer step, share of gradients
_LOGITS_COPIES = 3  # fp32 b*s*V tensors alive at the start of the backward
CPU_IMPORTS_BYTES = 400 * MIB  # python + torch + transformers + peft imported (392 measured)
CPU_WORKSPACE_BYTES = 24 * MIB
CUDA_CONTEXT_BYTES = 512 * MIB


@dataclass(frozen=True)
class Breakdown:
    """Peak memory of one device, by component, in bytes. The components add up to `total`."""

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    kv_cache: int = 0
    logits: int = 0
    overhead: int = 0
    moment: str = ""  # when the peak happens: "backward", "optimizer step", "generation"

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.kv_cache
            + self.logits
            + self.overhead
        )

    def items(self) -> list[tuple[str, int]]:
        """(component, bytes) pairs in display order."""
        names = (
            "weights",
            "gradients",
            "optimizer",
            "activations",
            "kv_cache",
            "logits",
            "overhead",
        )
        return [(n, getattr(self, n)) for n in names]

    def fits(self, available_bytes: int) -> bool:
        return self.total <= available_bytes


@dataclass(frozen=True)
class EstimateInputs:
    """The knobs of `estimate_memory`, kept with its result so advice can vary them."""

    lora: bool
    lora_r: int
    lora_targets: tuple[str, ...]
    precision: str
    max_seq_length: int
    batch_size: int
    deepspeed_stage: int | None
    gpus: int
    gradient_checkpointing: bool


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-device peak memory for training and for serving, with the inputs that made it."""

    arch: ArchSpec
    inputs: EstimateInputs
    training: Breakdown
    serving: Breakdown
    num_parameters: int
    trainable_parameters: int
    notes: list[str] = field(default_factory=list)

    def breakdown(self, phase: Phase = "training") -> Breakdown:
        return self.training if phase == "training" else self.serving

    def fits(self, available_bytes: int, *, phase: Phase = "training") -> bool:
        """Whether the peak of `phase` fits in `available_bytes` per device."""
        return self.breakdown(phase).fits(available_bytes)

    def advice(self, available_bytes: int, *, phase: Phase = "training") -> list[str]:
        """What to change so that `phase` fits in `available_bytes`; [] if it fits.

        Each line names the flag and the memory the change leads to; every suggestion is
        checked by estimating again with it.
        """
        return _advice(self, available_bytes, phase)


def estimate_memory(
    arch: ArchSpec,
    *,
    lora: bool,
    lora_r: int = 8,
    lora_targets: list[str] | None = None,
    precision: str = "32",
    max_seq_length: int,
    batch_size: int = 1,
    deepspeed_stage: int | None = None,
    gpus: int = 0,
    gradient_checkpointing: bool = False,
) -> MemoryEstimate:
    """Estimate the peak memory of one device, fine-tuning and serving `arch`.

    Args:
        arch: the model's shape.
        lora: LoRA adapters on a frozen base (else full fine-tuning).
        lora_r: LoRA rank.
        lora_targets: LoRA's target modules; default every linear of a block.
        precision: "32", "16" or "bf16" (the pipeline's `precision`).
        max_seq_length: tokens per sequence (training) and context (serving).
        batch_size: sequences per device per step; requests at once for serving.
        deepspeed_stage: 2 or 3 (ZeRO), GPUs only; None without DeepSpeed.
        gpus: GPUs used, one process each; 0 means CPU.
        gradient_checkpointing: recompute activations in the backward.

    Returns:
        A `MemoryEstimate`; `.training.total` and `.serving.total` are bytes per device.

    Raises:
        InvalidParameter: a value out of range, naming its flag.

    Example:
        >>> est = estimate_memory(card.config, lora=True, precision="bf16", max_seq_length=512)
        >>> est.fits(16 * GIB)
        True
    """
    targets = tuple(lora_targets or sorted(arch.layer_linears()))
    inputs = EstimateInputs(
        lora,
        lora_r,
        targets,
        precision,
        max_seq_length,
        batch_size,
        deepspeed_stage,
        gpus,
        gradient_checkpointing,
    )
    return estimate_from_inputs(arch, inputs)


def estimate_from_inputs(arch: ArchSpec, inputs: EstimateInputs) -> MemoryEstimate:
    """`estimate_memory` of the knobs in `inputs` (see there)."""
    lora, lora_r, targets = inputs.lora, inputs.lora_r, inputs.lora_targets
    precision, max_seq_length = inputs.precision, inputs.max_seq_length
    batch_size, gpus = inputs.batch_size, inputs.gpus
    _validate(arch, inputs)
    notes: list[str] = []
    cuda = gpus > 0
    half = precision in ("16", "bf16")
    if half and not cuda and precision == "16":
        notes.append("precision 16 on CPU runs as bf16 (fp16 matmuls are not a CPU thing).")
    n = arch.num_parameters()
    t = arch.lora_parameters(lora_r, list(targets)) if lora else n
    training = _training(arch, inputs, n, t, notes)
    serving = _serving(
        arch, precision=precision, context=max_seq_length, batch_size=batch_size, cuda=cuda
    )
    return MemoryEstimate(arch, inputs, training, serving, n, t, notes)


# -- training --------------------------------------------------------------------------------


def _validate(arch: ArchSpec, x: EstimateInputs) -> None:
    problems: list[str] = []
    if x.precision not in PRECISIONS:
        problems.append(f"--precision {x.precision!r} is not one of {', '.join(PRECISIONS)}")
    if x.max_seq_length < 1:
        problems.append(f"--max-seq-length must be >= 1 (got {x.max_seq_length})")
    if x.batch_size < 1:
        problems.append(f"--batch-size must be >= 1 (got {x.batch_size})")
    if x.lora_r < 1:
        problems.append(f"--lora-r must be >= 1 (got {x.lora_r})")
    if x.gpus < 0:
        problems.append(f"--gpus must be >= 0 (got {x.gpus})")
    if x.deepspeed_stage not in (None, 2, 3):
        problems.append(f"--deepspeed-stage must be 2 or 3 (got {x.deepspeed_stage})")
    elif x.deepspeed_stage is not None and x.gpus < 1:
        problems.append("--deepspeed-stage needs GPUs: DeepSpeed shards across GPU processes")
    if x.lora:
        unknown = sorted(set(x.lora_targets) - set(arch.layer_linears()))
        if unknown:
            problems.append(
                f"LoRA targets {unknown} are not linear layers of this {arch.model_type} model "
                f"(choose from {sorted(arch.layer_linears())})"
            )
    if problems:
        raise InvalidParameter(
            "; ".join(problems) + ".",
            fix="change the values named above (see `chattune compute fit --help`).",
        )


def _family(arch: ArchSpec) -> str:
    return "phi3" if arch.fused_qkv or arch.fused_gate_up else "llama"


def saved_bytes_per_token_layer(arch: ArchSpec, *, lora: bool, half: bool) -> float:
    """Bytes one decoder layer saves for the backward per token (see `_SAVED`)."""
    c_h, c_kv, c_i = _SAVED[(_family(arch), _variant(lora, half))]
    kv = arch.num_key_value_heads * arch.dim_head
    return c_h * arch.hidden_size + c_kv * kv + c_i * arch.intermediate_size


def _variant(lora: bool, half: bool) -> str:
    return ("lora" if lora else "full") + ("16" if half else "32")


def _training(arch: ArchSpec, x: EstimateInputs, n: int, t: int, notes: list[str]) -> Breakdown:
    cuda = x.gpus > 0
    half = x.precision in ("16", "bf16")
    g = max(1, x.gpus)
    stage = x.deepspeed_stage
    linears = arch.layer_linears()
    largest_param = max(arch.vocab_size * arch.hidden_size, *(a * b for a, b in linears.values()))
    layer_params = sum(a * b for a, b in linears.values())

    # weights, gradients, optimizer state (bytes per device)
    if x.lora:
        base = n * (2 if half else 4)  # the frozen base, in the training dtype
        weights, grads, optim = base + 4 * t, 4 * t, 8 * t  # fp32 adapters
        if stage == 3:
            weights = base // g + 2 * layer_params * (2 if half else 4) + 4 * t // g
        if stage in (2, 3):
            grads, optim = grads // g, optim // g
    elif stage is not None:
        w_bytes = 2 if half else 4
        weights, grads = w_bytes * n, w_bytes * n
        optim = (12 if half else 8) * n  # fp32 master copy (16-bit only) + 2 moments
        grads, optim = grads // g, optim // g
        if stage == 3:
            weights = weights // g + 2 * layer_params * w_bytes
    else:
        weights, grads, optim = 4 * n, 4 * n, 8 * n
        if half:  # autocast's 16-bit copies of every weight, alive until the backward
            head = arch.vocab_size * arch.hidden_size
            weights += 2 * (arch.num_hidden_layers * layer_params + head)

    # activations and logits
    tokens = x.batch_size * x.max_seq_length
    saved = saved_bytes_per_token_layer(arch, lora=x.lora, half=half)
    residency = 1.0 if cuda else _CPU_RESIDENCY[_variant(x.lora, half)]
    full_acts = tokens * arch.num_hidden_layers * saved * residency
    if x.gradient_checkpointing:
        hidden_bytes = 2 if (half and x.lora) else 4  # residual stream: fp32 under autocast
        live = tokens * arch.hidden_size * hidden_bytes * arch.num_hidden_layers
        live += tokens * saved * residency  # the layer being recomputed
        acts = live if cuda else max(live, _CPU_CHECKPOINT_RETENTION * full_acts)
    else:
        acts = full_acts
    logits = _LOGITS_COPIES * tokens * arch.vocab_size * 4
    head_grad = 0 if x.lora else arch.vocab_size * arch.hidden_size * 4 // (g if stage else 1)

    overhead = CUDA_CONTEXT_BYTES if cuda else CPU_IMPORTS_BYTES + CPU_WORKSPACE_BYTES
    backward = Breakdown(
        weights=int(weights),
        gradients=int(head_grad if not x.lora else grads),
        optimizer=int(optim),
        activations=int(acts),
        logits=int(logits),
        overhead=overhead,
        moment="backward",
    )
    if cuda:  # foreach AdamW: one fp32 temporary per trainable parameter (of this shard)
        step_temp = 4 * t // (g if stage else 1)
    else:  # single-tensor AdamW: two temporaries the size of the largest parameter
        step_temp = 2 * 4 * min(largest_param, t) + _CPU_OPTIMIZER_SLACK * grads
    step = Breakdown(
        weights=int(weights),
        gradients=int(grads),
        optimizer=int(optim + step_temp),
        overhead=overhead,
        moment="optimizer step",
    )
    return backward if backward.total >= step.total else step


# -- serving ---------------------------------------------------------------------------------


def _serving(
    arch: ArchSpec, *, precision: str, context: int, batch_size: int, cuda: bool
) -> Breakdown:
    w = 4 if precision == "32" else 2
    kv = arch.num_key_value_heads * arch.dim_head
    tokens = batch_size * context
    return Breakdown(
        weights=arch.num_parameters() * w,
        kv_cache=2 * arch.num_hidden_layers * kv * tokens * w,
        activations=tokens * (3 * arch.intermediate_size + 4 * arch.hidden_size) * w,
        logits=2 * batch_size * arch.vocab_size * 4,
        overhead=CUDA_CONTEXT_BYTES if cuda else CPU_IMPORTS_BYTES + CPU_WORKSPACE_BYTES,
        moment="prefill",
    )


def estimate_serving(
    arch: ArchSpec,
    *,
    precision: str = "bf16",
    context: int | None = None,
    batch_size: int = 1,
    gpus: int = 0,
) -> Breakdown:
    """Serving memory of one replica: `batch_size` requests at `context` tokens (default:
    the model's full context), weights in bf16/fp16 (fp32 for precision "32")."""
    if precision not in PRECISIONS:
        raise InvalidParameter(
            f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.",
            fix="pass --precision 32, 16 or bf16.",
        )
    return _serving(
        arch,
        precision=precision,
        context=context or arch.max_position_embeddings,
        batch_size=batch_size,
        cuda=gpus > 0,
    )


# -- advice ----------------------------------------------------------------------------------


def gib(n: float) -> str:
    """Bytes as GiB with one decimal, or as MiB below 1 GiB: "3.0 GiB", "270 MiB"."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def _again(est: MemoryEstimate, **changes: object) -> MemoryEstimate:
    return estimate_from_inputs(est.arch, replace(est.inputs, **changes))  # type: ignore[arg-type]


def _largest_fitting(est: MemoryEstimate, key: str, available: int, phase: Phase) -> int:
    """The largest value of `key` (max_seq_length or batch_size) below the current that
    fits, by bisection (memory grows with both); 0 if even 1 does not fit."""
    lo, hi = 0, getattr(est.inputs, key)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _again(est, **{key: mid}).fits(available, phase=phase):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _combined(est: MemoryEstimate, available: int, phase: Phase) -> str | None:
    """Changes made one after another (LoRA, bf16, checkpointing, a shorter sequence)
    until the estimate fits; None if even that does not."""
    x = est.inputs
    steps: list[tuple[str, dict[str, object]]] = []
    if phase == "training":
        if not x.lora:
            steps.append(("--lora", {"lora": True}))
        if not x.gradient_checkpointing:
            steps.append(("--gradient-checkpointing", {"gradient_checkpointing": True}))
    if x.precision == "32":
        steps.append(("--precision bf16", {"precision": "bf16"}))
    flags: list[str] = []
    changes: dict[str, object] = {}
    current = est
    for flag, change in steps:
        if current.fits(available, phase=phase):
            break
        flags.append(flag)
        changes.update(change)
        current = _again(est, **changes)
    if not current.fits(available, phase=phase):
        seq = _largest_fitting(current, "max_seq_length", available, phase)
        if seq < 1:
            return None
        flags.append(f"--max-seq-length {seq}")
        current = _again(current, max_seq_length=seq)
    if not flags:
        return None
    return f"together: {' '.join(flags)}: {gib(current.breakdown(phase).total)}"


def _advice(est: MemoryEstimate, available: int, phase: Phase) -> list[str]:
    if est.fits(available, phase=phase):
        return []
    x = est.inputs
    out: list[str] = []
    need = est.breakdown(phase).total

    def tried(text: str, other: MemoryEstimate) -> None:
        total = other.breakdown(phase).total
        if total <= available:
            out.append(f"{text}: {gib(total)} instead of {gib(need)}")

    if phase == "training":
        if not x.lora:
            lora_params = est.arch.lora_parameters(x.lora_r, list(x.lora_targets))
            tried(
                f"use --lora ({lora_params:,} trainable parameters instead of "
                f"{est.num_parameters:,})",
                _again(est, lora=True),
            )
        if x.precision == "32":
            tried("use --precision bf16", _again(est, precision="bf16"))
        if not x.gradient_checkpointing:
            tried("use --gradient-checkpointing", _again(est, gradient_checkpointing=True))
    elif x.precision == "32":
        tried("serve in 16-bit: --precision bf16", _again(est, precision="bf16"))
    seq = _largest_fitting(est, "max_seq_length", available, phase)
    if seq >= 1:
        what = "context (KV cache)" if phase == "serving" else "tokens per sequence"
        out.append(f"lower --max-seq-length to {seq} ({what}; now {x.max_seq_length})")
    if x.batch_size > 1:
        b = _largest_fitting(est, "batch_size", available, phase)
        if b >= 1:
            out.append(f"lower --batch-size to {b} (now {x.batch_size})")
    if phase == "training" and x.gpus >= 1 and x.deepspeed_stage != 3:
        for g in (2, 4, 8, 16, 32, 64):
            if g > x.gpus and _again(est, deepspeed_stage=3, gpus=g).fits(available):
                total = _again(est, deepspeed_stage=3, gpus=g).training.total
                out.append(f"use --deepspeed-stage 3 with --gpus {g}: {gib(total)} per GPU")
                break
    if x.gpus == 0:
        on_gpu = _again(est, gpus=1, deepspeed_stage=None).breakdown(phase).total
        out.append(f"run on a GPU with at least {gib(on_gpu)} (--gpus 1)")
    else:
        out.append(f"use GPUs with at least {gib(need)} each")
    if not any("instead of" in line or "--max-seq-length" in line for line in out):
        combo = _combined(est, available, phase)
        if combo:
            out.insert(0, combo)
    return out
