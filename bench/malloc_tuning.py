"""glibc malloc tuning (`chattune.host.malloc.tune_malloc`) on and off, training and serving.

Each measurement runs in its own process, with `CHATTUNE_MALLOC` set to `tuned` or
`default`. malloc settings are per process, so this is the only clean way to switch them.
The order alternates between repeats, and the figures are medians of `--repeats`.

  train  the T1 fast-path step `chattune_bf16` (`t1_fastpaths`): SmolLM2-135M LoRA r=16, bf16
         autocast, one packed batch of `--tokens` tokens with supervised logits only.
         `--steps` timed steps after one warm-up; the median wall time per step.
  serve  chattune's serving engine as the model server loads it (bf16, packed weights):
         `--requests` greedy chat requests of test_gen submitted at once, `--max-new-tokens`
         each, after one warm-up request; output tokens/s, and the engine's prefill and
         decode seconds.

The first tuned training process also profiles one more step (torch.profiler's operator
table) to bench/profiles/train_step_chattune_bf16_malloc.txt: the default training step's
profile as the product now runs it (`t1_fastpaths.py` runs glibc's default malloc).

Both also report the minor page faults of the timed part (`ru_minflt`: pages the kernel
mapped in on first touch) and the process's peak RSS.

    .venv/bin/python bench/malloc_tuning.py                 # ~6 min
    .venv/bin/python bench/malloc_tuning.py --only serve --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    PROFILES_DIR,
    BenchFailed,
    default_model_dir,
    median,
    parser,
    peak_rss_mb,
    run_child,
    utc_stamp,
    write_result,
)

SETTINGS = ("tuned", "default")
KINDS = ("train", "serve")
CHILD_TIMEOUT_S = 900
PROFILE = PROFILES_DIR / "train_step_chattune_bf16_malloc.txt"


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child_train(spec: dict[str, Any]) -> dict[str, Any]:
    import t1_fastpaths as tf

    conv = tf.conversations_bin(tf.rows(Path(spec["prep"])), spec["tokens"])
    attn, logits = tf.VARIANTS["chattune"]
    batch = tf.packed_batch(conv, logits)
    import torch

    torch.manual_seed(0)  # the same LoRA initialisation in every process: the same losses
    model, opt, _ = tf.load_bf16_variant(Path(spec["model_dir"]))
    tf.train_step(model, opt, batch, attn, bf16=True)  # warm-up
    f0 = _faults()
    steps = [tf.train_step(model, opt, batch, attn, bf16=True) for _ in range(spec["steps"])]
    faults = (_faults() - f0) / len(steps)
    if spec.get("profile"):  # one more step, profiled: where the time goes now
        tf.profile_step(model, opt, batch, attn, Path(spec["profile"]), bf16=True)
    return {
        "step_s": statistics.median(s["wall_s"] for s in steps),
        "steps_s": [s["wall_s"] for s in steps],
        "tokens": int(batch["input_ids"].numel()),
        "losses": [s["loss"] for s in steps],
        "page_faults_per_step": faults,
    }


def child_serve(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from profile_decode import prompts

    from chattune.models.checkpoint import resolve_checkpoint
    from chattune.models.loading import load_model, load_tokenizer, serving_dtype
    from chattune.serving.model_server.engine import Engine, SamplingParams

    ckpt = resolve_checkpoint(Path(spec["model_dir"]))
    tok = load_tokenizer(ckpt)
    device = torch.device("cpu")
    model, adapters = load_model(ckpt, device=device, dtype=serving_dtype(device))
    texts = [
        tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        for m in prompts(Path(spec["data_dir"]), spec["requests"])
    ]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    params = SamplingParams(max_new_tokens=spec["max_new_tokens"])
    engine = Engine(model, tok, adapters=adapters, max_batch_size=max(16, len(ids)))
    try:
        engine.submit(ids[0], params).text()  # warm-up
        before, f0, t0 = engine.stats(), _faults(), time.perf_counter()
        handles = [engine.submit(x, params) for x in ids]
        for h in handles:
            h.text()
        wall = time.perf_counter() - t0
        after = engine.stats()
    finally:
        engine.stop()
    n = sum(h.completion_tokens for h in handles)
    return {
        "tok_s": n / wall,
        "completion_tokens": n,
        "prefill_s": after["prefill_seconds"] - before["prefill_seconds"],
        "decode_s": after["step_seconds"] - before["step_seconds"],
        "page_faults": _faults() - f0,
        "token_ids": [h.token_ids for h in handles],
    }


def child_main(kind: str, spec_path: Path, out: Path) -> int:
    from chattune.host.malloc import tune_malloc

    state = tune_malloc()  # follows CHATTUNE_MALLOC, set by the parent
    spec = json.loads(spec_path.read_text())
    res = child_train(spec) if kind == "train" else child_serve(spec)
    res.update(malloc=state, peak_rss_mb=peak_rss_mb())
    out.write_text(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "repeats", "model_dir", "data_dir", "work_dir", "results_dir")
    ap.add_argument("--steps", type=int, default=3, help="train: timed steps per process")
    ap.add_argument("--tokens", type=int, default=2048, help="train: tokens per packed batch")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--only", choices=KINDS, help="measure only training or only serving")
    ap.add_argument(
        "--no-profile", action="store_true", help=f"do not write {PROFILE.relative_to(BENCH)}"
    )
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child_main(a.child, a.spec, a.out)

    from t1_training import _prepare

    from chattune.host.malloc import MALLOC_ENV

    stamp = utc_stamp()
    work = a.work_dir / f"malloc-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    model_dir = (a.model_dir or default_model_dir()).resolve()
    kinds = [a.only] if a.only else list(KINDS)
    prep = None
    if "train" in kinds:
        prep, _ = _prepare(model_dir, a.data_dir.resolve(), 512, work)
    spec = {
        "model_dir": str(model_dir), "data_dir": str(a.data_dir.resolve()),
        "prep": str(prep), "tokens": a.tokens, "steps": a.steps,
        "requests": a.requests, "max_new_tokens": a.max_new_tokens,
    }  # fmt: skip
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    runs: dict[str, dict[str, list[dict]]] = {k: {s: [] for s in SETTINGS} for k in kinds}
    for rep in range(a.repeats):
        for kind in kinds:
            order = SETTINGS if rep % 2 == 0 else SETTINGS[::-1]
            for setting in order:
                os.environ[MALLOC_ENV] = setting
                out = work / f"{kind}-{setting}-{rep}.json"
                profile = kind == "train" and setting == "tuned" and rep == 0
                spec["profile"] = str(PROFILE) if profile and not a.no_profile else None
                spec_path.write_text(json.dumps(spec))
                argv_ = [__file__, "--child", kind, "--spec", str(spec_path), "--out", str(out)]
                r = run_child(argv_, out, CHILD_TIMEOUT_S)
                if r["malloc"] != setting:
                    raise BenchFailed(f"the {setting} child ran with malloc {r['malloc']}")
                runs[kind][setting].append(r)
                key = "step_s" if kind == "train" else "tok_s"
                print(
                    f"repeat {rep + 1}/{a.repeats}: {kind} {setting}: {key} {r[key]:.2f}, "
                    f"page faults {r.get('page_faults_per_step', r.get('page_faults')):,.0f}, "
                    f"peak RSS {r['peak_rss_mb']:,.0f} MB",
                    flush=True,
                )
    os.environ.pop(MALLOC_ENV, None)
    summary: dict[str, Any] = {}

    def by_setting(kind: str, key: str) -> dict[str, float]:
        return {s: median([r[key] for r in runs[kind][s]]) for s in SETTINGS}

    def pairs(kind: str) -> list[tuple[dict, dict]]:
        return list(zip(runs[kind]["tuned"], runs[kind]["default"], strict=True))

    if "train" in runs:
        t = by_setting("train", "step_s")
        summary["train"] = {
            "step_s": t,
            "speedup": t["default"] / t["tuned"],
            "speedups_per_repeat": [d["step_s"] / u["step_s"] for u, d in pairs("train")],
            "page_faults_per_step": by_setting("train", "page_faults_per_step"),
            "peak_rss_mb": by_setting("train", "peak_rss_mb"),
            "same_losses": all(u["losses"] == d["losses"] for u, d in pairs("train")),
        }
    if "serve" in runs:
        v = by_setting("serve", "tok_s")
        summary["serve"] = {
            "tok_s": v,
            "speedup": v["tuned"] / v["default"],
            "speedups_per_repeat": [u["tok_s"] / d["tok_s"] for u, d in pairs("serve")],
            "prefill_s": by_setting("serve", "prefill_s"),
            "decode_s": by_setting("serve", "decode_s"),
            "page_faults": by_setting("serve", "page_faults"),
            "peak_rss_mb": by_setting("serve", "peak_rss_mb"),
            "same_tokens": all(u["token_ids"] == d["token_ids"] for u, d in pairs("serve")),
        }
        for rs in runs["serve"].values():
            for r in rs:
                r.pop("token_ids")
    for kind, s in summary.items():
        print(f"{kind}: {json.dumps(s)}")
    path = write_result(
        a.results_dir,
        "malloc",
        stamp,
        {
            "benchmark": "malloc_tuning",
            "when": stamp,
            "settings": {k: str(v) for k, v in vars(a).items()},
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"results: {path}")
    same = all(s.get("same_losses", s.get("same_tokens")) for s in summary.values())
    if not same:
        print("the tuned and default runs disagree: malloc settings must not change results")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
