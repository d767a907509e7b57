"""Time one LoRA training step (forward + backward) of SmolLM2 on a packed 4 x 512 batch,
under several variants, and print torch.profiler's top operators for one of them.

    .venv/bin/python bench/profile_train_step.py --prep DIR/prep --model-dir M [--variants a,b]

Not a benchmark result (no repeats across processes); it says where a step's time goes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from chattune.train.attention import register
from chattune.train.packing import PackedCollator, PaddedCollator, pack_batches

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load(model_dir: Path, attn: str):
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn
    )
    cfg = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, cfg)


def batches(prep: Path, fast: bool, rows_per: int = 4, max_len: int = 512):
    t = pq.read_table(prep / "train.parquet", columns=["input_ids", "labels"]).to_pylist()
    bins = pack_batches([len(r["input_ids"]) for r in t], rows_per * max_len, 42)
    collate = PackedCollator(flash_attn_kwargs=fast, supervised_logits=fast)
    packed = collate([t[i] for i in bins[0]])
    padded = PaddedCollator(pad_token_id=0)(t[:rows_per])
    return packed, padded


def step(model, batch, opt) -> float:
    """CPU seconds of the process (both threads): steadier than wall time on a shared machine."""
    t0 = time.process_time()
    out = model(**batch)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prep", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--which", default="packed")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fast", action="store_true", help="cu_seq_lens + supervised logits")
    ap.add_argument("--ab", action="store_true", help="alternate baseline and fast steps")
    a = ap.parse_args()
    register()
    model = load(a.model_dir, a.attn)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    packed, padded = batches(a.prep, a.fast)
    batch = packed if a.which == "packed" else padded
    n = batch["input_ids"].numel()
    sup = int((batch["labels"] != -100).sum())
    print(
        f"{a.which} attn={a.attn} fast={a.fast}: {n} tokens, {sup} supervised, "
        f"threads={torch.get_num_threads()}"
    )
    if a.ab:
        _, _ = packed, padded
        base, _ = batches(a.prep, False)
        fast, _ = batches(a.prep, True)
        times: dict[str, list[float]] = {"sdpa": [], "fast": []}
        for i in range(a.steps):
            for name, impl, b in (("sdpa", "sdpa", base), ("fast", "chattune_packed", fast)):
                model.base_model.model.config._attn_implementation = impl
                times[name].append(step(model, b, opt))
                print(f"step {i} {name}: {times[name][-1]:.2f} s", flush=True)
        for name, ts in times.items():
            print(name, "median", sorted(ts)[len(ts) // 2])
        return
    for i in range(a.steps):
        dt = step(model, batch, opt)
        print(f"step {i}: {dt:.2f} s  {n / dt:.1f} tok/s")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step(model, batch, opt)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
