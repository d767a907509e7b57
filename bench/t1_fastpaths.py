"""T1 fast paths on and off, the sequence-length scaling, and a profile of the training step.

One process loads SmolLM2-135M-Instruct with LoRA r=16 on every linear layer once and runs
LoRA training steps (forward, backward, AdamW) on packed batches of `--tokens` tokens,
switching the fast paths between steps, so every variant sees the same model, data and
machine state; variants alternate step by step and the median step counts:

  baseline          transformers' sdpa with the block-diagonal mask it builds from the packed
                    position_ids, logits and cross-entropy over every position
  packed_attention  chattune's attention per packed conversation (kernels/attention.py)
  supervised_logits only the positions whose next token is a label go through the lm_head
  chattune          both (the default of `chattune job create` with packing)
  chattune_bf16     the same step as the finetune step runs it with precision bf16 (base
                    in bf16, adapters in fp32, autocast), on a second model; only where
                    the CPU runs bf16 in hardware. Its attention per conversation takes the
                    blocked kernel (kernels/blocked_attention.py), chattune's default there
  chattune_bf16_sdpa  the same with CHATTUNE_ATTENTION_KERNEL=sdpa: SDPA's flash kernel per
                    conversation (the blocked kernel off)

The process tunes glibc's malloc first, as the finetune step does (host/malloc.py).

Scaling: the same `--tokens` per batch cut into sequences of 128 .. 2048 tokens (from the
tokenized chitchat stream, assistant labels kept), for `baseline` and `chattune`: how the
cost per token grows with the sequence length. Written as JSON and a PNG.

Profile: torch.profiler's operator table of one `chattune` step and one `baseline` step,
to bench/profiles/.

`--compile`: whether `torch.compile` pays. The `chattune` step of the model wrapped in
`torch.compile` against the same step eager, alternating: the first compiled step (compile
time included), the steady step, a step on a batch of other conversations (new lengths:
recompiles), and the break-even step count.

`--variants`: a subset (baseline and chattune always run); `make bench-scaling` and `make
bench-full` run all of them.

    .venv/bin/python bench/t1_fastpaths.py --steps 3
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    PROFILES_DIR,
    default_model_dir,
    matmul_gflops,
    parser,
    peak_rss_mb,
    utc_stamp,
    write_result,
)
from t1_training import LORA_TARGETS, _prepare

IGNORE = -100
BF16_VARIANTS = ("chattune_bf16", "chattune_bf16_sdpa")
VARIANTS = {  # name: (packed attention, supervised logits)
    "baseline": (False, False),
    "packed_attention": (True, False),
    "supervised_logits": (False, True),
    "chattune": (True, True),
}
LENGTHS = (128, 256, 512, 1024, 2048)


def load_lora(model_dir: Path, bf16: bool = False) -> Any:
    """SmolLM2 + LoRA r=16 as chattune's finetune step builds it: with `bf16`, the frozen base
    in bf16 and the adapters in fp32 (PEFT's default upcast), steps under bf16 autocast."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chattune.kernels.attention import register

    register()
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    cfg = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, cfg).train()


def rows(prep: Path) -> list[dict[str, list[int]]]:
    import pyarrow.parquet as pq

    return pq.read_table(prep / "train.parquet", columns=["input_ids", "labels"]).to_pylist()


def packed_batch(examples: list[dict[str, list[int]]], fast_logits: bool) -> dict[str, Any]:
    from chattune.train.packing import PackedCollator

    return PackedCollator(flash_attn_kwargs=True, supervised_logits=fast_logits)(examples)


def conversations_bin(data: list[dict[str, list[int]]], tokens: int, index: int = 0) -> list[dict]:
    """Bin `index` of those chattune's packer makes of the data: conversations as they are."""
    from chattune.train.packing import pack_batches

    bins = pack_batches([len(r["input_ids"]) for r in data], tokens, 42)
    return [data[i] for i in bins[index]]


def fixed_length_bin(data: list[dict[str, list[int]]], tokens: int, length: int) -> list[dict]:
    """`tokens // length` sequences of exactly `length` tokens cut from the data stream."""
    ids = [t for r in data for t in r["input_ids"]]
    labels = [t for r in data for t in r["labels"]]
    while len(ids) < tokens:
        ids, labels = ids + ids, labels + labels
    return [
        {"input_ids": ids[a : a + length], "labels": labels[a : a + length]}
        for a in range(0, tokens - length + 1, length)
    ]


def train_step(
    model: Any,
    opt: Any,
    batch: dict[str, Any],
    packed_attention: bool,
    bf16: bool = False,
    kernel: str = "auto",
) -> dict:
    """One optimizer step; wall and process CPU seconds (steadier on a shared machine).

    `bf16`: the forward under `torch.autocast("cpu", bfloat16)`, as accelerate wraps it when
    the Trainer runs with `bf16=True` (chattune's finetune step with precision bf16/16).
    `kernel`: CHATTUNE_ATTENTION_KERNEL for the step (the packed attention's kernel)."""
    import contextlib
    import os

    import torch

    from chattune.kernels.attention import KERNEL_ENV

    os.environ[KERNEL_ENV] = kernel

    model.base_model.model.config._attn_implementation = (
        "chattune_packed" if packed_attention else "sdpa"
    )
    b = dict(batch)
    if not packed_attention:  # sdpa builds the block mask from position_ids
        for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
            b.pop(k, None)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    w0, c0 = time.perf_counter(), time.process_time()
    with amp:
        loss = model(**b).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {
        "wall_s": time.perf_counter() - w0,
        "cpu_s": time.process_time() - c0,
        "loss": float(loss.detach()),
    }


def alternate(model: Any, opt: Any, batches: dict[str, tuple], steps: int) -> dict[str, dict]:
    """Run `steps` rounds; each round one step of every variant, order reversed every round.
    A warm-up round first (not counted). A variant is (batch, packed attention) on `model`,
    or (batch, packed attention, (its model, its optimizer, bf16 autocast)[, kernel])."""
    out: dict[str, list[dict]] = {name: [] for name in batches}
    names = list(batches)
    for rnd in range(steps + 1):
        for name in names if rnd % 2 == 0 else names[::-1]:
            batch, attn, *own = batches[name]
            m, o, bf16 = own[0] if own else (model, opt, False)
            r = train_step(m, o, batch, attn, bf16=bf16, kernel=own[1] if own[1:] else "auto")
            if rnd:
                out[name].append(r)
    tokens = {name: v[0]["input_ids"].numel() for name, v in batches.items()}
    sup = {name: int((v[0]["labels"][0, 1:] != IGNORE).sum()) for name, v in batches.items()}
    return {
        name: {
            "tokens": tokens[name],
            "supervised_tokens": sup[name],
            "median_wall_s": statistics.median(r["wall_s"] for r in rs),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "tok_s": tokens[name] / statistics.median(r["wall_s"] for r in rs),
            "steps": rs,
        }
        for name, rs in out.items()
    }


def compile_check(model: Any, opt: Any, batches: list[dict[str, Any]], steps: int) -> dict:
    """Eager against `torch.compile(model)` on `chattune` steps (see the module doc)."""
    import torch

    compiled = torch.compile(model)
    first = train_step(compiled, opt, batches[0], True)
    pair = {"eager": (model, batches[0]), "compiled": (compiled, batches[0])}
    walls: dict[str, list[float]] = {k: [] for k in pair}
    for rnd in range(steps):
        for name in pair if rnd % 2 == 0 else list(pair)[::-1]:
            m, b = pair[name]
            walls[name].append(train_step(m, opt, b, True)["wall_s"])
    other = train_step(compiled, opt, batches[1], True)
    eager, comp = (statistics.median(walls[k]) for k in ("eager", "compiled"))
    gain = eager - comp
    return {
        "first_compiled_step_s": first["wall_s"],
        "eager_median_s": eager,
        "compiled_median_s": comp,
        "speedup": eager / comp,
        "new_lengths_step_s": other["wall_s"],
        "break_even_steps": (first["wall_s"] - comp) / gain if gain > 0 else None,
        "steps": walls,
    }


def load_bf16_variant(model_dir: Path) -> tuple[Any, Any, bool]:
    """The model, optimizer and autocast flag of the `chattune_bf16` variant: the `chattune`
    step as the finetune step runs it with precision bf16 (base in bf16, adapters in fp32,
    autocast). Whether bf16 learns as well is T1's question (eval loss), not this one's."""
    import torch

    bf = load_lora(model_dir, bf16=True)
    return bf, torch.optim.AdamW([p for p in bf.parameters() if p.requires_grad], lr=1e-5), True


def profile_step(
    model: Any, opt: Any, batch: dict[str, Any], attn: bool, path: Path, bf16: bool = False
) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, opt, batch, attn, bf16=bf16)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")


def plot(scaling: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_len in scaling.items():
        ax.plot(list(by_len), list(by_len.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens), same tokens per batch")
    ax.set_ylabel("training tokens/s")
    ax.set_title("T1: SmolLM2-135M LoRA step vs sequence length")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "model_dir", "data_dir", "work_dir", "results_dir")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (median)")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per packed batch")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument(
        "--variants",
        default=",".join([*VARIANTS, *BF16_VARIANTS]),
        help="which fast-path variants to run (baseline and chattune always run)",
    )
    ap.add_argument(
        "--no-baseline-profile", action="store_true", help="profile only chattune's steps"
    )
    ap.add_argument("--compile", action="store_true", help="measure torch.compile too")
    a = ap.parse_args(argv)

    import torch

    from chattune.host.machine import cpu_bf16_supported
    from chattune.host.malloc import tune_malloc

    tune_malloc()  # as the finetune step does

    model_dir = (a.model_dir or default_model_dir()).resolve()
    stamp = utc_stamp()
    prep, _ = _prepare(model_dir, a.data_dir.resolve(), 512, a.work_dir / f"t1f-{stamp}")
    data = rows(prep)
    model = load_lora(model_dir)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    fp32 = matmul_gflops("float32")

    conv = conversations_bin(data, a.tokens)
    wanted = {"baseline", "chattune", *a.variants.split(",")}
    unknown = wanted - {*VARIANTS, *BF16_VARIANTS}
    if unknown:
        raise SystemExit(
            f"unknown variants {sorted(unknown)}; known: {[*VARIANTS, *BF16_VARIANTS]}"
        )
    batches = {
        name: (packed_batch(conv, logits), attn)
        for name, (attn, logits) in VARIANTS.items()
        if name in wanted
    }
    hw_bf16 = cpu_bf16_supported() and "chattune_bf16" in wanted  # emulated bf16: ~100x slower
    if hw_bf16:
        bf16_model = load_bf16_variant(model_dir)
        batches["chattune_bf16"] = (*batches["chattune"], bf16_model)
        if "chattune_bf16_sdpa" in wanted:
            batches["chattune_bf16_sdpa"] = (*batches["chattune"], bf16_model, "sdpa")
    print(f"fast paths: {len(conv)} conversations, {a.tokens} tokens per batch", flush=True)
    fast = alternate(model, opt, batches, a.steps)
    base = fast["baseline"]["median_wall_s"]
    for name, r in fast.items():
        r["speedup_vs_baseline"] = base / r["median_wall_s"]
        print(
            f"  {name:<18} {r['median_wall_s']:6.2f} s/step  {r['tok_s']:7.1f} tok/s  "
            f"x{r['speedup_vs_baseline']:.2f}",
            flush=True,
        )
    profile_step(model, opt, batches["chattune"][0], True, PROFILES_DIR / "train_step_chattune.txt")
    if not a.no_baseline_profile:
        profile_step(
            model, opt, batches["baseline"][0], False, PROFILES_DIR / "train_step_baseline.txt"
        )

    precision = None
    if hw_bf16:
        bf, bf_opt, _ = batches.pop("chattune_bf16")[2]
        batches.pop("chattune_bf16_sdpa", None)
        bf16_s = fast["chattune_bf16"]["median_wall_s"]
        precision = {"speedup_bf16_vs_fp32": fast["chattune"]["median_wall_s"] / bf16_s}
        print(f"  bf16 against fp32 (chattune): x{precision['speedup_bf16_vs_fp32']:.2f}")
        if "chattune_bf16_sdpa" in fast:
            flash = fast["chattune_bf16_sdpa"]["median_wall_s"]
            precision["speedup_blocked_vs_sdpa_attention"] = flash / bf16_s
            print(f"  bf16, blocked attention against SDPA's flash: x{flash / bf16_s:.2f}")
        profile_step(
            bf, bf_opt, batches["chattune"][0], True,
            PROFILES_DIR / "train_step_chattune_bf16.txt", bf16=True,
        )  # fmt: skip
        del bf, bf_opt

    compiled = None
    if a.compile:
        other = conversations_bin(data, a.tokens, index=1)
        compiled = compile_check(
            model, opt, [batches["chattune"][0], packed_batch(other, True)], a.steps
        )
        print(
            f"  torch.compile: first step {compiled['first_compiled_step_s']:.1f} s, "
            f"steady {compiled['compiled_median_s']:.2f} s vs eager "
            f"{compiled['eager_median_s']:.2f} s (x{compiled['speedup']:.2f}), new lengths "
            f"{compiled['new_lengths_step_s']:.1f} s, break-even {compiled['break_even_steps']}",
            flush=True,
        )

    scaling: dict[str, dict[int, float]] = {"baseline": {}, "chattune": {}}
    if not a.no_scaling:
        for length in (int(x) for x in a.lengths.split(",")):
            exs = fixed_length_bin(data, a.tokens, length)
            pair = {
                "baseline": (packed_batch(exs, False), False),
                "chattune": (packed_batch(exs, True), True),
            }
            res = alternate(model, opt, pair, max(1, a.steps - 1))
            for name, r in res.items():
                scaling[name][length] = r["tok_s"]
            print(
                f"  length {length:>5}: baseline {res['baseline']['tok_s']:7.1f} tok/s, "
                f"chattune {res['chattune']['tok_s']:7.1f} tok/s",
                flush=True,
            )
    a.results_dir.mkdir(parents=True, exist_ok=True)
    png = a.results_dir / f"t1-scaling-{stamp}.png"  # one per run, as T2's sweep
    if scaling["chattune"]:
        plot(scaling, png)
    out = write_result(
        a.results_dir,
        "t1f",
        stamp,
        {
            "benchmark": "T1 fast paths and scaling",
            "settings": {
                "steps": a.steps,
                "tokens": a.tokens,
                "model_dir": str(model_dir),
                "compile": a.compile,
                "variants": list(fast),
            },
            "fp32_matmul_gflops": fp32,
            "fast_paths": fast,
            "precision_bf16": precision,
            "torch_compile": compiled,
            "scaling_tok_s": scaling,
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    print(f"results: {out}" + (f", plot {png}" if scaling["chattune"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
