"""Profile chattune's serving engine: where a continuous-batching decode step's time goes.

Loads SmolLM2-135M-Instruct as the model server does, submits `--requests` greedy chat
requests at once (so they decode together, `--max-new-tokens` each) to `serving.engine.Engine`,
and reports the run's tokens/s for these engines, alternating, `--repeats` times (median),
each adding one fast path to the one before:

    baseline     KV cache kept as transformers' DynamicCache (`concat`), prompts prefilled one
                 at a time, transformers' sdpa, plain nn.Linear weights
    +kv          the preallocated KV cache (`kvcache.BatchCache`)
    +packed      the prompts that arrive together prefilled in one packed forward
    +decode      decode steps attend with `kernels.attention.decode_attention_forward`
    +prepacked   the linear layers' weights packed once for oneDNN (`kernels.prepack`), on a
                 second copy of the model: chattune's default engine
    sdpa prefill the default engine with CHATTUNE_ATTENTION_KERNEL=sdpa: its packed prefill
                 attends with SDPA's flash kernel, not the blocked kernel it takes in CPU bf16
                 (`kernels.blocked_attention`); compare its prefill_seconds with +prepacked's
                 (measured in bf16 only: in any other dtype it is +prepacked's engine)

and checks that all of them decode the same text. Where the serving dtype is not fp32 (bf16
on a CPU with bf16 instructions), one more engine, `default fp32`, runs chattune's default
engine on the model loaded in fp32: the dtype on and off (its greedy text may part from
bf16's, so it is compared with nothing). Then records torch.profiler's operator table
of the same decode step made by hand (the engine's thread is not followed by the profiler) to
bench/profiles/decode_engine_<dtype>.txt (bf16 or fp32: the serving dtype of this CPU).

    .venv/bin/python bench/profile_decode.py --requests 16 --max-new-tokens 64
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import PROFILES_DIR, common_prefix, default_model_dir, greedy_tie, parser


def prompts(data_dir: Path, n: int) -> list[list[dict[str, str]]]:
    """First user turn of each test_gen conversation, cycled to `n`."""
    rows = [json.loads(x) for x in (data_dir / "test_gen.jsonl").read_text().splitlines() if x]
    firsts = [[m for m in r["messages"] if m["role"] == "user"][:1] for r in rows]
    return [firsts[i % len(firsts)] for i in range(n)]


def agreement(
    model: Any, prompts: list[list[int]], tokens: dict[str, list[list[int]]], exact: tuple
) -> str:
    """Check that every engine decoded the baseline's tokens, or parted from them at a tie
    only (`common.greedy_tie`, judged by `model`): the engines with the baseline's numerics
    (`exact`) must match it exactly; the decode attention's length runs (and, in CPU bf16,
    the packed prefill's blocked attention) sum in another order, which may break a bf16 tie
    the other way. Raises SystemExit otherwise."""
    base = tokens["baseline"]
    ties = 0
    for name, answers in tokens.items():
        for i, (want, got) in enumerate(zip(base, answers, strict=True)):
            if got == want:
                continue
            shared = common_prefix(want, got)
            tie = None
            if name not in exact and shared < min(len(want), len(got)):
                tie = greedy_tie(model, prompts[i], want[:shared], want[shared], got[shared])
            if tie is None:
                raise SystemExit(
                    f"{name} decoded other tokens than the baseline for request {i} after "
                    f"{shared} shared tokens, not at a tie: {got} vs {want}"
                )
            ties += 1
    return f"the same tokens from all but {ties} answers that part from the baseline at a tie"


LINEAR_OPS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm")
ATTENTION_OPS = (
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_attention_math",
)


def floor_line(events: Any, steps: int, wall_s: float) -> str:
    """Where a profiled decode step's time goes, by kind of kernel, and the step's floor:
    its linears and attention kernels alone (everything else, ops and Python, removed).

    `events`: torch.profiler's `key_averages()` of `steps` steps; `wall_s`: a step's wall time
    measured without the profiler. The ops' self time is per step; what the wall time has
    beyond all ops is Python and dispatch (the model's modules, transformers' mask and output
    handling, the cache's views)."""
    self_ms = {e.key: e.self_cpu_time_total / 1000 / steps for e in events}
    linear = sum(self_ms.get(k, 0.0) for k in LINEAR_OPS)
    attention = sum(self_ms.get(k, 0.0) for k in ATTENTION_OPS)
    ops = sum(self_ms.values())
    wall = 1000 * wall_s
    floor = linear + attention
    return (
        f"per step: linears {linear:.1f} ms, attention kernel {attention:.1f} ms, other ops "
        f"{ops - floor:.1f} ms, Python and dispatch about {max(wall - ops, 0.0):.1f} ms "
        f"(wall {wall:.1f} ms without the profiler); floor (linears + attention only) "
        f"{floor:.1f} ms = at most {wall / floor:.2f}x this step\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "repeats", "model_dir", "data_dir")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--out", type=Path, help="default bench/profiles/decode_engine_<serving dtype>.txt"
    )
    a = ap.parse_args(argv)

    import torch
    from baselines import ConcatBatchCache, prefill_one_at_a_time
    from torch.profiler import ProfilerActivity, profile

    from chattune.kernels.attention import KERNEL_ENV
    from chattune.models.checkpoint import resolve_checkpoint
    from chattune.models.loading import load_model, load_tokenizer, serving_dtype
    from chattune.serving.model_server.engine import Engine, SamplingParams

    ckpt = resolve_checkpoint((a.model_dir or default_model_dir()).resolve())
    tok = load_tokenizer(ckpt)
    device = torch.device("cpu")
    dtype = serving_dtype(device)
    plain = load_model(ckpt, device=device, dtype=dtype, prepack=False)
    model, adapters = load_model(ckpt, device=device, dtype=dtype)  # the server's
    ids = [
        tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        for m in prompts(a.data_dir, a.requests)
    ]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in ids]
    params = SamplingParams(max_new_tokens=a.max_new_tokens)
    # "alone": prompts prefilled one at a time (bench/baselines.py), not an engine option
    off = {"batch_cache": ConcatBatchCache, "alone": True, "decode_attention": False}
    variants = {
        "baseline": off,
        "+kv": off | {"batch_cache": None},
        "+packed": off | {"batch_cache": None, "alone": False},
        "+decode": {},  # the engine's defaults, on plain weights
        "+prepacked": {},
    }
    if dtype == torch.bfloat16:  # the blocked kernel is CPU bf16 only: else the same engine
        variants["sdpa prefill"] = {}
    kernels = {"sdpa prefill": "sdpa"}  # CHATTUNE_ATTENTION_KERNEL per engine, else auto
    models = {name: plain for name in variants}
    models |= {"+prepacked": (model, adapters), "sdpa prefill": (model, adapters)}
    if dtype != torch.float32:
        variants["default fp32"] = {}
        models["default fp32"] = load_model(ckpt, device=device, dtype=torch.float32)
    runs: dict[str, list[float]] = {k: [] for k in variants}
    tokens: dict[str, list[list[int]]] = {}
    stats: dict[str, dict] = {}
    for rep in range(a.repeats):
        for name in list(variants) if rep % 2 == 0 else list(variants)[::-1]:
            os.environ[KERNEL_ENV] = kernels.get(name, "auto")
            options = dict(variants[name])
            alone = options.pop("alone", False)
            engine = Engine(
                models[name][0], tok, adapters=models[name][1],
                max_batch_size=max(16, a.requests), **options,
            )  # fmt: skip
            if alone:
                prefill_one_at_a_time(engine)
            engine.submit(ids[0], params).text()  # warm-up
            before = engine.stats()
            t0 = time.perf_counter()
            handles = [engine.submit(x, params) for x in ids]
            for h in handles:
                h.text()
            tokens[name] = [h.token_ids for h in handles]
            n = sum(h.completion_tokens for h in handles)
            runs[name].append(n / (time.perf_counter() - t0))
            after = engine.stats()
            keys = ("prefill_forwards", "prefill_seconds", "steps", "step_seconds")
            stats[name] = {k: round(after[k] - before[k], 2) for k in keys}
            engine.stop()
    os.environ[KERNEL_ENV] = "auto"
    tokens.pop("default fp32", None)  # another dtype: greedy text may part from bf16's
    # +packed's prefill has the baseline's numerics unless it takes the blocked kernel (bf16)
    exact = ("+kv",) if dtype == torch.bfloat16 else ("+kv", "+packed")
    check = agreement(plain[0], ids, tokens, exact)
    med = {k: statistics.median(v) for k, v in runs.items()}
    engine_line = (
        f"engine ({str(dtype).removeprefix('torch.')}): {a.requests} requests "
        f"x {a.max_new_tokens} new tokens submitted at once, "
        f"median of {a.repeats}; {check}: "
        + ", ".join(
            f"{k} {v:.1f} tok/s ({v / med['baseline']:.2f}x; {stats[k]})" for k, v in med.items()
        )
        + "\n"
    )
    # The engine decodes on its own thread, which torch.profiler does not follow: profile
    # the same decode step here, as the engine makes it (one BatchCache for the batch, rows
    # longest first and left-padded, attention mask, position ids, the decode attention's
    # length runs), at the run's batch size and prompt lengths.
    from transformers import DynamicCache

    from chattune.serving.model_server.engine import decode_buckets
    from chattune.serving.model_server.kvcache import BatchCache

    rows = sorted(ids, key=len, reverse=True)
    batch, width = len(rows), len(rows[0])
    prompt = torch.tensor([[0] * (width - len(x)) + x for x in rows])
    mask = torch.arange(width)[None] >= (width - torch.tensor([len(x) for x in rows]))[:, None]
    mask = mask.long()
    with torch.inference_mode():
        cache = DynamicCache()
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        model(input_ids=prompt, attention_mask=mask, position_ids=pos, cache=cache)
        cache = BatchCache.from_prefill(cache)
        nxt = torch.zeros(batch, 1, dtype=torch.long)
        steps = 8

        def decode(n: int) -> list[float]:
            nonlocal mask, step_runs
            times = []
            for _ in range(n):
                t1 = time.perf_counter()
                mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
                pos = mask.sum(dim=1, keepdim=True) - 1
                step_runs = decode_buckets((pos[:, 0] + 1).tolist())
                kw = {"decode_buckets": step_runs} if len(step_runs) > 1 else {}
                model(input_ids=nxt, attention_mask=mask, position_ids=pos, cache=cache, **kw)
                times.append(time.perf_counter() - t1)
            return times

        step_runs: tuple = ()
        decode(2)  # warm-up
        plain_s = statistics.median(decode(16))  # the wall time of a step, profiler off
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step_s = sum(decode(steps)) / steps
    events = prof.key_averages()
    table = events.table(sort_by="self_cpu_time_total", row_limit=20)
    head = engine_line + (
        f"profiled: {steps} decode steps at batch {batch}, prompts of {len(rows[-1])}.."
        f"{width} tokens, attention in {len(step_runs)} length runs: "
        f"{1000 * step_s:.0f} ms per step (profiler on), "
        f"{1000 * plain_s:.0f} ms off (median of 16)\n" + floor_line(events, steps, plain_s)
    )
    name = {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))
    a.out = a.out or PROFILES_DIR / f"decode_engine_{name}.txt"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(head + table + "\n")
    print(head + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
