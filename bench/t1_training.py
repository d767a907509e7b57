"""T1 training benchmark (issue 6): chattune's finetune step against TRL's SFTTrainer.

SmolLM2-135M-Instruct, LoRA r=16 on every linear layer of the blocks, chitchat train_sft,
max_seq_length 512, and for every contender the same batch (4 sequences of at most 512 tokens
per optimizer step, no gradient accumulation), steps, learning rate, schedule and seed:

  chattune     `chattune.train.finetune.run_finetune` on the output of `run_preprocess`
               (its defaults: padding-free packing, assistant-only labels), precision bf16
               where `cpu_bf16_supported()` (as `trl_best`), else "32"
  trl_default  `trl.SFTTrainer` with its defaults (padded batches, gradient checkpointing,
               loss on every token), fp32: TRL's own default `bf16=True` is turned off
               because this CPU has no bf16 instructions (see below)
  trl_best     TRL with its best settings here: `packing=True` (bfd, padding-free), no
               gradient checkpointing, bf16 only where `cpu_bf16_supported()`; on a CPU
               without AVX512-BF16/AMX, bf16 matmuls are emulated (hundreds of times slower
               than fp32, measured in the same run as `bf16_matmul_gflops`), so fp32

Each contender runs in its own process; the order alternates between repeats; the table
shows medians over repeats and ratios to TRL's default measured in the same repeat.
Measured per contender: supervised tokens/s (labels not -100 after the shift), peak RSS,
the loss on the same held-out rows (the first `--eval-rows` of test_sft, tokenized once by
chattune's preprocess with assistant-only labels) taken once the contender has trained on
`--eval-tokens` supervised tokens, and the fraction of the compute bound: LoRA costs about
4N FLOPs per token (N = base parameters; forward 2N, backward through activations 2N, the
attention term is left out at these lengths), and the bound is the matmul GFLOP/s
(bf16 where the CPU has it, else fp32) measured at the start of the run.

    .venv/bin/python bench/t1_training.py --steps 8 --repeats 3
    .venv/bin/python bench/t1_training.py --steps 2 --repeats 1   # smoke run, a few minutes
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    MODEL_NAME,
    BenchFailed,
    TrainProbe,
    default_model_dir,
    matmul_gflops,
    median,
    parser,
    peak_rss_mb,
    run_child,
    utc_stamp,
    write_json,
    write_result,
)

CONTENDERS = ("chattune", "trl_default", "trl_best")
BASELINE = "trl_default"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHILD_TIMEOUT_S = 3600


# -- child side: one contender, one process -------------------------------------------------
def _eval_rows(spec: dict[str, Any]) -> list[dict[str, list[int]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(Path(spec["prep_dir"]) / "validation.parquet")
    rows = table.select(["input_ids", "labels"]).to_pylist()
    return rows[: spec["eval_rows"]]


def _held_out_loss(model: Any, rows: list[dict[str, list[int]]]) -> float:
    """Token-weighted mean cross-entropy over the supervised tokens of `rows`, one per batch."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            if n == 0:
                continue
            # one sequence: its boundaries, for chattune's per-conversation attention
            cu = torch.tensor([0, ids.shape[1]], dtype=torch.int32)
            bounds = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu}
            out = model(input_ids=ids, labels=labels, use_cache=False, **bounds)
            total += float(out.loss) * n
            count += n
    model.train(was_training)
    if count == 0:
        raise BenchFailed("the held-out rows have no supervised tokens")
    return total / count


def _run_chattune(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    from chattune.host.machine import cpu_bf16_supported
    from chattune.train.finetune import FinetuneConfig, run_finetune
    from chattune.train.params import FinetuneParams

    params = FinetuneParams(
        precision="bf16" if cpu_bf16_supported() else "32",  # the same rule as trl_best
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=spec["seed"],
        apply_lora=True,
        lora_r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        evaluation_strategy="disable",
        logging_steps=1,
        save_steps=10**6,  # no checkpoint inside the run; the final adapter is still saved
        max_seq_length=spec["max_seq_length"],
    )
    cfg = FinetuneConfig(
        model_dir=Path(spec["model_dir"]),
        data_dir=Path(spec["prep_dir"]),
        output_dir=work,
        params=params,
        lora_target_modules=LORA_TARGETS,
        max_seq_length=spec["max_seq_length"],
    )
    run_finetune(cfg)
    return {"precision": params.precision, "packing": params.packing, "optim": params.optim}


def _run_trl(spec: dict[str, Any], work: Path, best: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from chattune.host.machine import cpu_bf16_supported

    rows = [json.loads(line) for line in Path(spec["train_file"]).read_text().splitlines()]
    # only the conversation: TRL's conversational format is a `messages` column
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows if r.get("messages")])
    bf16 = best and cpu_bf16_supported()
    extra: dict[str, Any] = {"packing": True, "gradient_checkpointing": False} if best else {}
    args = SFTConfig(
        output_dir=str(work),
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=spec["seed"],
        data_seed=spec["seed"],
        max_length=spec["max_seq_length"],
        bf16=bf16,  # TRL defaults to True; fp32 unless the CPU runs bf16 in hardware
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.bfloat16 if bf16 else torch.float32
    )
    lora = LoraConfig(
        r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(spec["model_dir"]),
        peft_config=lora,
    )
    trainer.train()
    return {
        "precision": "bf16" if bf16 else "32",
        "packing": args.packing,
        "packing_strategy": args.packing_strategy if args.packing else None,
        # bfd packing turns padding-free on whatever `padding_free` says (TRL's docs)
        "padding_free": args.padding_free or (args.packing and args.packing_strategy == "bfd"),
        "gradient_checkpointing": args.gradient_checkpointing,
        "assistant_only_loss": args.assistant_only_loss,
        "optim": str(args.optim),
    }


def child_main(name: str, spec_path: Path) -> None:
    """Train contender `name` as `spec_path` says and write its result JSON."""
    import torch

    spec = json.loads(spec_path.read_text())
    torch.manual_seed(spec["seed"])
    rows = _eval_rows(spec)
    probe = TrainProbe(spec["eval_tokens"], lambda model: _held_out_loss(model, rows))
    probe.install()
    work = Path(spec["work_dir"])
    t0 = time.perf_counter()
    if name == "chattune":
        settings = _run_chattune(spec, work)
    elif name in ("trl_default", "trl_best"):
        settings = _run_trl(spec, work, best=name == "trl_best")
    else:
        raise BenchFailed(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")
    total_s = time.perf_counter() - t0
    out = probe.summary()
    model = probe.model
    if probe.eval_loss is None:  # never reached the token budget: evaluate at the end, flagged
        probe.eval_loss = _held_out_loss(model, rows)
        probe.eval_step, probe.eval_tokens = out["steps"], out["supervised_tokens_total"]
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    out.update(
        contender=name,
        settings=settings,
        train_call_s=total_s,
        eval_loss=probe.eval_loss,
        eval_step=probe.eval_step,
        eval_supervised_tokens=probe.eval_tokens,
        eval_budget_reached=probe.eval_tokens >= spec["eval_tokens"],
        base_parameters=base_params,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        peak_rss_mb=peak_rss_mb(),
    )
    write_json(Path(spec["result"]), out)


# -- parent side ------------------------------------------------------------------------------


def _prepare(model_dir: Path, data_dir: Path, max_len: int, work: Path) -> tuple[Path, dict]:
    """Tokenize train_sft/test_sft once with chattune's preprocess (not timed: that is T3)."""
    from chattune.train.preprocess import PreprocessConfig, run_preprocess

    train, test = data_dir / "train_sft.jsonl", data_dir / "test_sft.jsonl"
    for f in (train, test):
        if not f.is_file():
            raise SystemExit(
                f"{f} is missing: pass --data-dir, a folder made by "
                "`chattune data download --dataset chitchat --download-dir D --split-pc 5`"
            )
    cfg = PreprocessConfig(
        train_file=train,
        validation_file=test,  # train = all of train_sft, held-out = test_sft
        model_dir=model_dir,
        max_seq_length=max_len,
        output_dir=work / "prep",
    )
    report = run_preprocess(cfg, lambda _msg: None)
    return cfg.output_dir, report.metrics()


def _default_eval_tokens(prep: Path, steps: int, batch: int, max_len: int) -> int:
    """A budget every contender reaches within `steps`: 80% of the fewer supervised tokens
    per step of (a) 4 padded conversations with every token a label (TRL's default) and
    (b) one packed bin of batch x max_len tokens with assistant-only labels (chattune)."""
    import pyarrow.parquet as pq

    t = pq.read_table(prep / "train.parquet", columns=["input_ids", "labels"]).to_pylist()
    tokens = sum(len(r["input_ids"]) for r in t) / len(t)
    labels = sum(sum(x != -100 for x in r["labels"]) for r in t) / len(t)
    per_step = min(batch * (tokens - 1), 0.9 * batch * max_len * labels / tokens)
    return max(1, int(0.8 * steps * per_step))


def _check(name: str, res: dict[str, Any]) -> list[str]:
    """Problems with a contender's result: non-finite losses, a loss that did not fall."""
    losses = res["step_loss"]
    problems = []
    if not all(math.isfinite(x) for x in losses) or not math.isfinite(res["eval_loss"]):
        problems.append(f"{name}: non-finite loss (steps {losses}, eval {res['eval_loss']})")
    elif len(losses) >= 3:
        k = max(1, len(losses) // 4)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        if not last < first:
            problems.append(f"{name}: training loss did not fall ({first:.4f} -> {last:.4f})")
    if res["supervised_tokens_total"] <= 0:
        problems.append(f"{name}: no supervised tokens were trained on")
    return problems


def _table(summary: dict[str, dict[str, float]], bound_tok_s: float, dtype: str) -> str:
    head = (
        f"{'contender':<12} {'sup tok/s':>10} {'x TRL def':>9} {'proc tok/s':>10} "
        f"{'peak RSS MB':>11} {'eval loss':>9} {'@sup tok':>9} {'% bound':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        lines.append(
            f"{name:<12} {s['supervised_tok_s']:>10.1f} {s['ratio_vs_trl_default']:>9.2f} "
            f"{s['processed_tok_s']:>10.1f} {s['peak_rss_mb']:>11.0f} {s['eval_loss']:>9.4f} "
            f"{s['eval_supervised_tokens']:>9.0f} {100 * s['bound_fraction']:>7.2f}%"
        )
    lines.append(
        f"compute bound: {bound_tok_s:.0f} tok/s ({dtype} matmul peak / 4N); % bound is of"
    )
    lines.append("supervised tokens; proc tok/s counts every token in the batch, padding included")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the T1 benchmark; write bench/results/t1-<timestamp>.json; print the table."""
    ap = parser(__doc__, "repeats", "model_dir", "data_dir", "work_dir", "results_dir")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per contender (>= 2)")
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per optimizer step")
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--learning-rate", type=float, default=2e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--eval-rows", type=int, default=8, help="held-out rows of test_sft")
    ap.add_argument("--eval-tokens", type=int, help="supervised-token budget for the eval loss")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_main(a.child, a.spec)
        return 0
    if a.steps < 2:
        ap.error("--steps must be at least 2 (step 1 is the warm-up, outside the timing)")
    names = [n.strip() for n in a.contenders.split(",") if n.strip()]
    if unknown := set(names) - set(CONTENDERS):
        ap.error(f"unknown contender(s) {sorted(unknown)}; known: {', '.join(CONTENDERS)}")

    model_dir = (a.model_dir or default_model_dir()).resolve()
    started = datetime.now(UTC)
    stamp = utc_stamp(started)
    work = a.work_dir.resolve() / f"t1-{stamp}"
    print(f"model {model_dir}\ndata {a.data_dir}\nwork {work}", flush=True)
    prep, prep_metrics = _prepare(model_dir, a.data_dir.resolve(), a.max_seq_length, work)
    eval_tokens = a.eval_tokens or _default_eval_tokens(
        prep, a.steps, a.batch_size, a.max_seq_length
    )
    fp32_gflops = matmul_gflops("float32")
    from chattune.host.machine import cpu_bf16_supported

    hw_bf16 = cpu_bf16_supported()  # emulated bf16 is ~100x slower: a small probe is enough
    bf16_gflops = matmul_gflops("bfloat16", **({} if hw_bf16 else {"n": 256, "seconds": 0.5}))
    # the bound is the precision the contenders train in: bf16 where the CPU has it
    peak_gflops, peak_dtype = (bf16_gflops, "bf16") if hw_bf16 else (fp32_gflops, "fp32")
    print(f"fp32 matmul {fp32_gflops:.1f} GFLOP/s; bf16 {bf16_gflops:.2f} GFLOP/s", flush=True)
    settings = {
        "model": MODEL_NAME,
        "model_dir": str(model_dir),
        "data_dir": str(a.data_dir.resolve()),
        "steps": a.steps,
        "repeats": a.repeats,
        "batch_size": a.batch_size,
        "gradient_accumulation_steps": 1,
        "max_seq_length": a.max_seq_length,
        "learning_rate": a.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "seed": 42,
        "lora_r": a.lora_r,
        "lora_alpha": a.lora_alpha,
        "lora_dropout": 0.0,
        "lora_target_modules": LORA_TARGETS,
        "eval_rows": a.eval_rows,
        "eval_tokens": eval_tokens,
        "timing_window": "end of optimizer step 1 to end of step N, held-out eval excluded",
    }
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    for rep in range(a.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            d = work / f"r{rep}-{name}"
            d.mkdir(parents=True, exist_ok=True)
            spec = {
                **settings,
                "model_dir": str(model_dir),
                "prep_dir": str(prep),
                "train_file": str(a.data_dir.resolve() / "train_sft.jsonl"),
                "work_dir": str(d / "out"),
                "result": str(d / "result.json"),
            }
            write_json(d / "spec.json", spec)
            print(f"repeat {rep + 1}/{a.repeats}: {name} ...", end=" ", flush=True)
            try:
                res = run_child(
                    [__file__, "--child", name, "--spec", str(d / "spec.json")],
                    d / "result.json",
                    CHILD_TIMEOUT_S,
                )
            except BenchFailed as exc:
                print("FAILED", flush=True)
                problems.append(str(exc))
                continue
            res["repeat"] = rep
            runs.append(res)
            problems += _check(name, res)
            print(
                f"{res['supervised_tok_s']:.1f} sup tok/s, loss {res['step_loss'][0]:.3f} -> "
                f"{res['step_loss'][-1]:.3f}, eval {res['eval_loss']:.4f}, "
                f"RSS {res['peak_rss_mb']:.0f} MB",
                flush=True,
            )

    n_params = next((r["base_parameters"] for r in runs), 0)
    bound_tok_s = peak_gflops * 1e9 / (4 * n_params) if n_params else math.nan
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        ratios = []
        for r in mine:
            base = [b for b in runs if b["contender"] == BASELINE and b["repeat"] == r["repeat"]]
            if base:
                ratios.append(r["supervised_tok_s"] / base[0]["supervised_tok_s"])
        summary[name] = {
            "supervised_tok_s": median([r["supervised_tok_s"] for r in mine]),
            "processed_tok_s": median([r["processed_tok_s"] for r in mine]),
            "ratio_vs_trl_default": median(ratios),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
            "eval_loss": median([r["eval_loss"] for r in mine]),
            "eval_supervised_tokens": median([r["eval_supervised_tokens"] for r in mine]),
            "bound_fraction": median([r["supervised_tok_s"] for r in mine]) / bound_tok_s,
            "processed_bound_fraction": median([r["processed_tok_s"] for r in mine]) / bound_tok_s,
            "repeats_ok": len(mine),
        }
    result = {
        "benchmark": "T1 training",
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "settings": settings,
        "preprocess": prep_metrics,
        "fp32_matmul_gflops": fp32_gflops,
        "bf16_matmul_gflops": bf16_gflops,
        "base_parameters": n_params,
        "bound_tok_s": bound_tok_s,
        "bound_dtype": peak_dtype,
        "summary": summary,
        "runs": runs,
        "problems": problems,
    }
    out = write_result(a.results_dir, "t1", stamp, result)
    print(_table(summary, bound_tok_s, peak_dtype))
    print(f"results: {out}")
    if problems:
        print("FAILED checks:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
