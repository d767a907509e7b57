"""T3 data benchmark (issue 6): chattune's data path against TRL's dataset preparation.

The data: `--conversations` (default 25,000; the issue's size is 200,000) conversations drawn
with replacement, seeded, from the whole chitchat corpus (`chattune.data.chitchat`, all four
splits), written once as `{"messages": [...]}` JSON lines into the work folder and reused.

Contenders, each step in its own process, each from that same file to trainable batches:

  chattune  1. convert: `chattune data download --dataset FILE --download-dir D --split-pc 100`
               (the CLI's `main`, in-process: read, convert to the ultrachat schema, write);
            2. preprocess: `run_preprocess` (render the chat template, tokenize, label the
               assistant tokens, truncate to 512, split 80/10/10, write parquet) with
               `workers` = `--workers` (default: the product's default, "auto");
            3. pack: the finetune step's data loading and packing plan
               (`chattune.train.finetune._datasets`: read train/validation parquet,
               `pack_batches` into bins of batch x 512 tokens), the last work before the
               first training batch.
  trl       `datasets.load_dataset("json", ...)` then `SFTTrainer._prepare_dataset` (TRL's
            own code: chat template + tokenize per example, labels, bfd packing to 512 rows,
            which truncates each conversation to 512) with `dataset_num_proc` processes and
            a fresh datasets cache per run. The trainer is made without `__init__` (no model
            is loaded): `_prepare_dataset` reads only `_tokenizer`, `chat_template` and
            `completion_only_loss` of it, set as `__init__` sets them for this data.

TRL's `assistant_only_loss` cannot be used with SmolLM2's template (no `{% generation %}`
markers, and TRL cannot patch it: `get_training_chat_template` raises), so TRL runs its
default: every token is a label. chattune labels the assistant turns only (more work).

Measured: conversations/s (conversations in / seconds of the timed section, which starts
before the tokenizer or data are loaded) and peak RSS, per process: `ru_maxrss` of the
process itself and the sampled peak of the summed RSS of the process and all its descendants
(TRL's `num_proc` workers, chattune's preprocess workers and their fork server; shared pages
counted once per process, so an upper bound). CPU seconds: the process's own, plus the larger
of its waited-for children's and the sampled CPU of its descendants (chattune's workers are
children of a fork server that is never waited for).

    .venv/bin/python bench/t3_data.py                              # 25k x 3 repeats, ~5 min
    .venv/bin/python bench/t3_data.py --conversations 200000       # the issue's size
    .venv/bin/python bench/t3_data.py --conversations 5000 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import resource
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    MODEL_NAME,
    BenchFailed,
    check_host,
    default_model_dir,
    median,
    parser,
    peak_rss_mb,
    run_child,
    utc_stamp,
    write_json,
    write_result,
)

CONTENDERS = ("chattune", "trl")
CHATTUNE_STEPS = ("convert", "preprocess", "pack")
CHILD_TIMEOUT_S = 3600
TOKEN_TOLERANCE = 0.001  # relative difference allowed between the token counts
RSS_TARGET_MB = 1024
RATE_TARGET = 3.0


# -- the data ---------------------------------------------------------------------------------
def make_data(n: int, seed: int, data_dir: Path) -> Path:
    """`n` conversations drawn with replacement (seeded) from the whole chitchat corpus, as
    `{"messages": [...]}` lines; written once, then reused (same n and seed, same file)."""
    path = data_dir / f"chitchat-resampled-{n}-seed{seed}.jsonl"
    if path.is_file():
        return path
    from chattune.data.chitchat import load_chitchat

    corpus = load_chitchat()
    pool = [row["messages"] for rows in corpus.splits.values() for row in rows]
    picks = random.Random(seed).choices(range(len(pool)), k=n)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in picks:
            f.write(json.dumps({"messages": pool[i]}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# -- child side -------------------------------------------------------------------------------
class TreeRSS:
    """Samples the summed RSS of this process and its descendants; keeps the peak (MiB), and
    the CPU seconds each descendant had used when last seen (`descendants_cpu_s`)."""

    def __init__(self, every_s: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._every = every_s
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self._cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        total = 0
        with contextlib.suppress(psutil.Error):
            total += self._proc.memory_info().rss
        for p in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += p.memory_info().rss
                cpu = p.cpu_times()
                self._cpu[p.pid] = cpu.user + cpu.system
        self.peak_mb = max(self.peak_mb, total / 2**20)

    @property
    def descendants_cpu_s(self) -> float:
        """CPU seconds of the descendants seen, each as last sampled (up to `every_s` old)."""
        return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._sample()

    def __enter__(self) -> TreeRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children waited for so far."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _memory(cpu0: float, tree: TreeRSS | None = None) -> dict[str, float]:
    """Peak RSS of this process and of its largest child, and the CPU seconds since `cpu0`
    (less disturbed by other processes on the machine than the wall time): the process's own
    plus the larger of its waited-for children's and its descendants' as `tree` sampled them
    (chattune's preprocess workers are children of a fork server, which is never waited for)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    own, waited = me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime
    sampled = tree.descendants_cpu_s if tree is not None else 0.0
    return {
        "cpu_s": own + max(waited, sampled) - cpu0,
        "peak_rss_mb": peak_rss_mb(),
        "children_max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _child_convert(spec: dict[str, Any]) -> dict[str, Any]:
    from chattune.cli.main import main as cli

    out = Path(spec["convert_dir"])
    argv = ["data", "download", "--dataset", spec["data_file"], "--download-dir", str(out)]
    argv += ["--split-pc", "100", "--json"]
    with TreeRSS() as tree:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        rc = cli(argv)
        seconds = time.perf_counter() - t0
    mem = _memory(cpu0, tree)
    if rc != 0:
        raise BenchFailed(f"chattune {' '.join(argv)} exited {rc}")
    written = out / Path(spec["data_file"]).name
    with written.open("rb") as f:
        rows = sum(1 for _ in f)
    return {**mem, "seconds": seconds, "rows_written": rows, "tree_peak_rss_mb": tree.peak_mb}


def _child_preprocess(spec: dict[str, Any]) -> dict[str, Any]:
    # imported before the timing, as the TRL child imports trl (and with it transformers'
    # modeling stack and torch) before its own: imports are outside both timed sections
    # (`process_wall_s` has them). `AutoTokenizer.from_pretrained` imports the model's config
    # class, which needs that stack: with only `AutoTokenizer` imported, the load took 1.36 s,
    # 1.1 s of it importing, against 0.22 s after `transformers.modeling_utils` (2026-12-03),
    # so the modeling stack is imported here as trl imports it
    import transformers.modeling_utils  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    from chattune.train.preprocess import PreprocessConfig, run_preprocess

    train_file = Path(spec["convert_dir"]) / Path(spec["data_file"]).name
    logs: list[str] = []
    with TreeRSS() as tree:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        report = run_preprocess(
            PreprocessConfig(
                train_file=train_file,
                model_dir=Path(spec["model_dir"]),
                max_seq_length=spec["max_seq_length"],
                output_dir=Path(spec["prep_dir"]),
                workers=spec["workers"],
            ),
            logs.append,
        )
        seconds = time.perf_counter() - t0
    mem = _memory(cpu0, tree)
    m = report.metrics()
    splits = ("train", "validation", "test")
    return {
        **mem,
        "seconds": seconds,
        "tree_peak_rss_mb": tree.peak_mb,
        "encoding": next((x for x in logs if x.startswith("encoding in ")), "not logged"),
        "conversations_kept": int(sum(m[f"{s}_rows"] for s in splits)),
        "tokens": int(sum(m[f"{s}_tokens"] for s in splits)),
        "label_tokens": int(sum(m[f"{s}_label_tokens"] for s in splits)),
        "train_label_tokens": int(m["train_label_tokens"]),
        "truncated": int(m["truncated_rows"]),
        "dropped": {k: d.count for k, d in report.dropped.items()},
        "rows": {s: int(m[f"{s}_rows"]) for s in splits},
    }


def _child_pack(spec: dict[str, Any]) -> dict[str, Any]:
    """What the finetune step does with the parquet before its first batch: read the train and
    validation splits and plan the packed bins (`chattune.train.finetune._datasets`)."""
    from chattune.train.finetune import FinetuneConfig, _datasets
    from chattune.train.params import FinetuneParams

    prep = Path(spec["prep_dir"])
    cfg = FinetuneConfig(
        model_dir=Path(spec["model_dir"]),
        data_dir=prep,
        output_dir=prep / "finetune",
        params=FinetuneParams(
            per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=spec["batch_size"],
            max_seq_length=spec["max_seq_length"],
            seed=spec["seed"],
        ),
        lora_target_modules=[],
        max_seq_length=spec["max_seq_length"],
    )
    with TreeRSS() as tree:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        train, val, _collator, _per_step = _datasets(cfg)
        seconds = time.perf_counter() - t0
    mem = _memory(cpu0, tree)
    bins = train.bins
    if sorted(i for b in bins for i in b) != list(range(len(train.rows))):
        raise BenchFailed("chattune's packing plan does not hold every train row exactly once")
    bin_tokens = [sum(len(train.rows[i]["input_ids"]) for i in b) for b in bins]
    return {
        **mem,
        "seconds": seconds,
        "tree_peak_rss_mb": tree.peak_mb,
        "train_rows": len(train.rows),
        "train_bins": len(bins),
        "validation_bins": len(val),
        "max_bin_tokens": max(bin_tokens, default=0),
        "bin_capacity": spec["batch_size"] * spec["max_seq_length"],
    }


def _child_trl(spec: dict[str, Any]) -> dict[str, Any]:
    cache = Path(spec["cache_dir"])
    os.environ["HF_DATASETS_CACHE"] = str(cache)  # before datasets is imported: nothing reused
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template

    args = SFTConfig(
        output_dir=str(cache / "trainer"),
        max_length=spec["max_seq_length"],
        packing=True,  # TRL's best setting (T1's trl_best): bfd, padding-free
        dataset_num_proc=spec["num_proc"],
        seed=spec["seed"],
        bf16=False,
        use_cpu=True,
        report_to=[],
    )
    with TreeRSS() as tree:
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        tok = AutoTokenizer.from_pretrained(spec["model_dir"])
        ds = load_dataset("json", data_files=spec["data_file"], split="train", cache_dir=str(cache))
        t_load = time.perf_counter()
        trainer = SFTTrainer.__new__(SFTTrainer)
        # as SFTTrainer.__init__ sets them for a conversational dataset, assistant_only_loss off
        trainer._tokenizer = tok
        trainer.chat_template = None
        trainer.completion_only_loss = bool(args.completion_only_loss)
        out = trainer._prepare_dataset(ds, tok, args, args.packing, None, "train")
        seconds = time.perf_counter() - t0
    mem = _memory(cpu0, tree)
    seq_lengths = out["seq_lengths"]
    lengths = [n for row in seq_lengths for n in row]
    try:
        get_training_chat_template(tok)
        assistant_masks = "possible (not used: TRL's default assistant_only_loss=False)"
    except ValueError as exc:
        assistant_masks = f"not possible: {exc}"
    return {
        **mem,
        "seconds": seconds,
        "load_s": t_load - t0,
        "tree_peak_rss_mb": tree.peak_mb,
        "conversations_kept": len(lengths),
        "tokens": sum(lengths),
        "label_tokens": sum(lengths),  # every token is a label (assistant_only_loss=False)
        "packed_rows": len(out),
        "max_row_tokens": max(sum(row) for row in seq_lengths),
        "settings": {
            "packing": args.packing,
            "packing_strategy": args.packing_strategy,
            "dataset_num_proc": args.dataset_num_proc,
            "assistant_only_loss": args.assistant_only_loss,
            "assistant_masks": assistant_masks,
            "completion_only_loss": args.completion_only_loss,
            "shuffle_dataset": args.shuffle_dataset,
            "max_length": args.max_length,
        },
    }


def child_main(step: str, spec_path: Path) -> None:
    """Run one step (`convert`, `preprocess`, `pack` or `trl`) as `spec_path` says; write its
    result."""
    spec = json.loads(spec_path.read_text())
    # the Rust tokenizer's thread pool: as many threads as TRL gets processes
    os.environ["RAYON_NUM_THREADS"] = str(spec["num_proc"])
    steps = {
        "convert": _child_convert,
        "preprocess": _child_preprocess,
        "pack": _child_pack,
        "trl": _child_trl,
    }
    if step not in steps:
        raise BenchFailed(f"unknown step {step!r}; known: {', '.join(steps)}")
    out = steps[step](spec)
    out = {**out, "step": step, "conversations_in": spec["conversations"]}
    write_json(Path(spec["result"]), out)


# -- parent side ------------------------------------------------------------------------------


def _step(name: str, spec: dict[str, Any], d: Path) -> dict[str, Any]:
    spec = {**spec, "result": str(d / f"{name}.json")}
    write_json(d / f"{name}-spec.json", spec)
    argv = [__file__, "--child", name, "--spec", str(d / f"{name}-spec.json")]
    return run_child(argv, d / f"{name}.json", CHILD_TIMEOUT_S)


def run_chattune(spec: dict[str, Any], d: Path) -> dict[str, Any]:
    """Convert, preprocess and the packing plan, each in its own process (as in a job: the
    CLI, the preprocess step, the finetune step); one record."""
    steps = {name: _step(name, spec, d) for name in CHATTUNE_STEPS}
    seconds = sum(r["seconds"] for r in steps.values())
    prep = steps["preprocess"]
    return {
        "contender": "chattune",
        "seconds": seconds,
        "conv_s": spec["conversations"] / seconds,
        "process_wall_s": sum(r["process_wall_s"] for r in steps.values()),
        "cpu_s": sum(r["cpu_s"] for r in steps.values()),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in steps.values()),
        "tree_peak_rss_mb": max(r["tree_peak_rss_mb"] for r in steps.values()),
        "conversations_kept": prep["conversations_kept"],
        "tokens": prep["tokens"],
        "label_tokens": prep["label_tokens"],
        **steps,
    }


def run_trl(spec: dict[str, Any], d: Path) -> dict[str, Any]:
    """TRL's load + `_prepare_dataset` in its own process."""
    res = _step("trl", spec, d)
    return {
        "contender": "trl",
        "seconds": res["seconds"],
        "conv_s": spec["conversations"] / res["seconds"],
        "process_wall_s": res["process_wall_s"],
        "cpu_s": res["cpu_s"],
        "peak_rss_mb": res["peak_rss_mb"],
        "tree_peak_rss_mb": res["tree_peak_rss_mb"],
        "conversations_kept": res["conversations_kept"],
        "tokens": res["tokens"],
        "label_tokens": res["label_tokens"],
        "trl": res,
    }


def check_pair(n: int, max_len: int, ct: dict[str, Any], trl: dict[str, Any] | None) -> list[str]:
    """Problems in one repeat: rows lost without a reason, token counts that disagree beyond
    what the drops explain, no labels, bins over their capacity."""
    problems = []
    prep, pack = ct["preprocess"], ct["pack"]
    if ct["convert"]["rows_written"] != n:
        problems.append(f"chattune convert wrote {ct['convert']['rows_written']} of {n} rows")
    dropped = sum(prep["dropped"].values())
    if prep["conversations_kept"] + dropped != n:
        problems.append(
            f"chattune kept {prep['conversations_kept']} and dropped {dropped} of {n} conversations"
        )
    if not 0 < prep["label_tokens"] < prep["tokens"] or prep["train_label_tokens"] <= 0:
        problems.append(f"chattune labels: {prep['label_tokens']} of {prep['tokens']} tokens")
    if pack["max_bin_tokens"] > pack["bin_capacity"]:
        problems.append(f"chattune bin of {pack['max_bin_tokens']} > {pack['bin_capacity']}")
    if pack["train_rows"] != prep["rows"]["train"]:
        problems.append(f"chattune packed {pack['train_rows']} of {prep['rows']['train']} rows")
    if trl is None:
        return problems
    t = trl["trl"]
    if t["conversations_kept"] != n:
        problems.append(f"trl kept {t['conversations_kept']} of {n} conversations")
    if t["max_row_tokens"] > max_len:
        problems.append(f"trl packed row of {t['max_row_tokens']} > {max_len} tokens")
    expected = token_gap(max_len, prep["dropped"])
    if expected is not None:
        gap = t["tokens"] - prep["tokens"] - expected
        if abs(gap) > TOKEN_TOLERANCE * t["tokens"]:
            problems.append(
                f"tokens: trl {t['tokens']}, chattune {prep['tokens']} + {expected} in the rows "
                f"it dropped; {gap} unexplained (> {TOKEN_TOLERANCE:.1%})"
            )
    return problems


def token_gap(max_len: int, dropped: dict[str, int]) -> int | None:
    """Tokens TRL keeps in the rows chattune drops: a row that loses every assistant token to
    truncation is longer than `max_len`, so TRL keeps exactly `max_len` of it. None when other
    drops make the gap unknown."""
    if any(k != "truncated_no_assistant" for k, v in dropped.items() if v):
        return None
    return max_len * dropped.get("truncated_no_assistant", 0)


def summarize(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, float]]:
    """Medians per contender; chattune's ratio to TRL taken per repeat, then the median."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        s = {
            "conv_s": median([r["conv_s"] for r in mine]),
            "seconds": median([r["seconds"] for r in mine]),
            "cpu_s": median([r["cpu_s"] for r in mine]),
            "process_wall_s": median([r["process_wall_s"] for r in mine]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in mine]),
            "tree_peak_rss_mb": median([r["tree_peak_rss_mb"] for r in mine]),
            "conversations_kept": median([r["conversations_kept"] for r in mine]),
            "tokens": median([r["tokens"] for r in mine]),
            "label_tokens": median([r["label_tokens"] for r in mine]),
            "repeats_ok": len(mine),
        }
        if name == "chattune":
            n = mine[0]["preprocess"]["conversations_in"] if mine else 0
            s["steps"] = {
                step: {
                    "seconds": median([r[step]["seconds"] for r in mine]),
                    "conv_s": median([n / r[step]["seconds"] for r in mine]),
                    "cpu_s": median([r[step]["cpu_s"] for r in mine]),
                    "peak_rss_mb": median([r[step]["peak_rss_mb"] for r in mine]),
                }
                for step in CHATTUNE_STEPS
            }
            ratios = [
                r["conv_s"] / b["conv_s"]
                for r in mine
                for b in runs
                if b["contender"] == "trl" and b["repeat"] == r["repeat"]
            ]
            s["ratio_vs_trl"] = median(ratios)
        out[name] = s
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    """The markdown table of the medians."""
    lines = [
        "| contender | conversations/s | seconds | x TRL | CPU s | peak RSS MB "
        "| tree peak RSS MB | kept | tokens | label tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summary.items():
        ratio = f"{s['ratio_vs_trl']:.2f}" if math.isfinite(s.get("ratio_vs_trl", math.nan)) else ""
        lines.append(
            f"| {name} | {s['conv_s']:,.0f} | {s['seconds']:.1f} | {ratio} | {s['cpu_s']:.1f} | "
            f"{s['peak_rss_mb']:,.0f} | {s['tree_peak_rss_mb']:,.0f} | "
            f"{s['conversations_kept']:,.0f} | {s['tokens']:,.0f} | {s['label_tokens']:,.0f} |"
        )
    if "chattune" in summary:
        lines.append("")
        lines.append("| chattune step | conversations/s | seconds | CPU s | peak RSS MB |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for step, st in summary["chattune"]["steps"].items():
            lines.append(
                f"| {step} | {st['conv_s']:,.0f} | {st['seconds']:.1f} | {st['cpu_s']:.1f} | "
                f"{st['peak_rss_mb']:,.0f} |"
            )
    return "\n".join(lines)


def targets(summary: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The issue's targets: >= 3x TRL's conversations/s, chattune peak RSS < 1 GB."""
    c = summary.get("chattune")
    if not c:
        return {}
    rss = max(c["peak_rss_mb"], c["tree_peak_rss_mb"])
    return {
        "rate_ratio": c.get("ratio_vs_trl"),
        "rate_target": RATE_TARGET,
        "rate_met": bool(c.get("ratio_vs_trl", math.nan) >= RATE_TARGET),
        "peak_rss_mb": rss,
        "rss_target_mb": RSS_TARGET_MB,
        "rss_met": rss < RSS_TARGET_MB,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the T3 benchmark; write bench/results/t3-<timestamp>.json; print the table."""
    ap = parser(__doc__, "repeats", "model_dir", "work_dir", "results_dir")
    ap.add_argument("--conversations", type=int, default=25_000, help="200000: the issue's size")
    ap.add_argument("--seed", type=int, default=42, help="resampling and packing seed")
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4, help="chattune bins: batch x max len")
    ap.add_argument(
        "--num-proc",
        type=int,
        default=os.cpu_count() or 1,
        help="TRL's dataset_num_proc and chattune's tokenizer threads",
    )
    ap.add_argument(
        "--workers",
        type=int,
        help="chattune's preprocess worker processes (default: PreprocessConfig's 'auto'; "
        "1: in-process)",
    )
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--keep-outputs", action="store_true", help="keep parquet and caches")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_main(a.child, a.spec)
        return 0
    names = [n.strip() for n in a.contenders.split(",") if n.strip()]
    if unknown := set(names) - set(CONTENDERS):
        ap.error(f"unknown contender(s) {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    if a.conversations < 100:
        ap.error("--conversations must be at least 100 (preprocess needs 10 training rows)")

    model_dir = (a.model_dir or default_model_dir()).resolve()
    host = check_host("T3")
    started = datetime.now(UTC)
    stamp = utc_stamp(started)
    root = a.work_dir.resolve()
    work = root / f"t3-{stamp}"
    data_file = make_data(a.conversations, a.seed, root / "data")
    print(f"model {model_dir}\ndata {data_file}\nwork {work}", flush=True)
    settings = {
        "model": MODEL_NAME,
        "model_dir": str(model_dir),
        "data_file": str(data_file),
        "conversations": a.conversations,
        "resample_seed": a.seed,
        "repeats": a.repeats,
        "max_seq_length": a.max_seq_length,
        "batch_size": a.batch_size,
        "num_proc": a.num_proc,
        "seed": a.seed,
        "chattune_threads": f"RAYON_NUM_THREADS={a.num_proc} (the Rust tokenizer's pool)",
        "workers": a.workers or "auto",
        "chattune_workers": f"PreprocessConfig(workers={a.workers or 'auto'}): worker "
        "processes with 1 tokenizer thread each from 2 on, in-process below pool_min_rows",
        "trl_dataset_num_proc": a.num_proc,
        "timed": "from before the tokenizer and data are loaded to the end of packing",
    }
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    for rep in range(a.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        got: dict[str, dict[str, Any]] = {}
        for name in order:
            d = work / f"r{rep}-{name}"
            d.mkdir(parents=True, exist_ok=True)
            spec = {
                **settings,
                "model_dir": str(model_dir),
                "convert_dir": str(d / "converted"),
                "prep_dir": str(d / "prep"),
                "cache_dir": str(d / "hf-cache"),
            }
            print(f"repeat {rep + 1}/{a.repeats}: {name} ...", end=" ", flush=True)
            try:
                res = (run_chattune if name == "chattune" else run_trl)(spec, d)
            except BenchFailed as exc:
                print("FAILED", flush=True)
                problems.append(str(exc))
                continue
            finally:
                if not a.keep_outputs:
                    for sub in ("converted", "prep", "hf-cache"):
                        shutil.rmtree(d / sub, ignore_errors=True)
            res["repeat"] = rep
            runs.append(res)
            got[name] = res
            print(
                f"{res['conv_s']:,.0f} conv/s ({res['seconds']:.1f} s), peak RSS "
                f"{res['peak_rss_mb']:,.0f} MB (tree {res['tree_peak_rss_mb']:,.0f}), "
                f"kept {res['conversations_kept']:,}, tokens {res['tokens']:,}",
                flush=True,
            )
        if "chattune" in got:
            problems += [
                f"repeat {rep + 1}: {p}"
                for p in check_pair(
                    a.conversations, a.max_seq_length, got["chattune"], got.get("trl")
                )
            ]

    summary = summarize(runs, names)
    result = {
        "benchmark": "T3 data",
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        **host,
        "load_average_end": os.getloadavg(),
        "settings": settings,
        "summary": summary,
        "targets": targets(summary),
        "table": table(summary),
        "runs": runs,
        "problems": problems,
    }
    out = write_result(a.results_dir, "t3", stamp, result)
    print(result["table"])
    print(f"targets: {json.dumps(result['targets'])}")
    print(f"results: {out}")
    if problems:
        print("FAILED checks:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
