"""The decode step's linears against this CPU's memory bandwidth and matmul peak (issue 6).

A decode step of SmolLM2-135M at 16 rows spends most of its time in the 211 linear layers
(bench/profiles/decode_engine_*.txt). This script asks what bounds them. On random weights
with the model's shapes (30 layers x q, k, v, o, gate, up, down, plus the lm_head: every
byte a step reads), in the serving dtype, it times one pass over all of them at each row
count and sets it against two bounds measured in the same run:

  memory   the weights' bytes over the read bandwidth of `torch.sum` on a buffer as large
  compute  2 x rows x weights FLOPs over the peak of a large square matmul (common.matmul_gflops)

Variants:
  plain     `F.linear` (oneDNN/MKL on the plain weight)
  packed    chattune's serving path: weights packed once for oneDNN (kernels/prepack.py)
  inductor  (`--inductor`) torch.compile with freezing and inductor's C++ GEMM template
            (max-autotune), all linears in one compiled module; compiling takes minutes

Every variant's outputs are checked against `plain`'s (same seeded weights and inputs).

    .venv/bin/python bench/linear_kernels.py                         # ~10 s
    .venv/bin/python bench/linear_kernels.py --rows 1,16 --inductor  # + ~2 min compiling

Writes bench/results/linears-<UTC stamp>.json and prints a table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from common import BenchFailed, default_model_dir, matmul_gflops, parser, utc_stamp, write_result
from torch import nn


def model_shapes(model_dir: Path) -> list[tuple[int, int]]:
    """(out, in) of every linear layer a decode step of the model in `model_dir` runs."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise SystemExit(f"no config.json in {model_dir}: pass --model-dir a model folder")
    cfg = json.loads(path.read_text())
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head, cfg.get("num_key_value_heads", 1) * head
    layer = [(q, h), (kv, h), (kv, h), (h, q), (inter, h), (inter, h), (h, inter)]
    return layer * cfg["num_hidden_layers"] + [(cfg["vocab_size"], h)]


def read_gb_s(nbytes: int, dtype: torch.dtype, repeats: int) -> float:
    """Best GB/s of `torch.sum` over a buffer of `nbytes`: what streaming reads get here."""
    x = torch.ones(nbytes // dtype.itemsize, dtype=dtype)
    x.sum()
    return nbytes / best_s(lambda: x.sum(), repeats) / 1e9


def best_s(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` calls of `fn` after one warm-up (the machine's best, not noise)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class LinearStack(nn.Module):
    """Every layer of `shapes` as `nn.Linear` (random weights, no bias); `forward(xs)` runs
    them all, `xs` mapping in-features to an input."""

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=False) for o, i in shapes)

    def forward(self, xs: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        return [layer(xs[layer.in_features]) for layer in self.layers]


def linear_stack(shapes: list[tuple[int, int]], dtype: torch.dtype) -> LinearStack:
    """A `LinearStack` in `dtype`, for inference, the same weights on every call (seeded)."""
    torch.manual_seed(0)
    return LinearStack(shapes).to(dtype).eval()


def main(argv: list[str] | None = None) -> int:
    """Time the linears at each row count; write bench/results/linears-*.json; print a table."""
    from chattune.kernels.prepack import packed_count, prepack_linears
    from chattune.models.loading import serving_dtype

    ap = parser(__doc__, "model_dir", "results_dir")
    ap.add_argument("--rows", default="1,4,16,32", help="rows per call (decode batch sizes)")
    ap.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="the weights' dtype (default: chattune's serving dtype on this CPU)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="passes per variant; the best counts")
    ap.add_argument("--inductor", action="store_true", help="also inductor's C++ GEMM template")
    a = ap.parse_args(argv)
    rows = [int(r) for r in a.rows.split(",")]
    dtype = getattr(torch, a.dtype) if a.dtype else serving_dtype(torch.device("cpu"))
    tolerance = 0.05 if dtype == torch.bfloat16 else 1e-3  # outputs are about 1 in size
    model_dir = a.model_dir or default_model_dir()
    shapes = model_shapes(model_dir)
    weights = sum(o * i for o, i in shapes)
    nbytes = weights * dtype.itemsize

    started = datetime.now(UTC)
    read = read_gb_s(nbytes, dtype, a.repeats)
    peak = matmul_gflops(str(dtype).removeprefix("torch."))
    print(
        f"{len(shapes)} linears, {weights / 1e6:.1f}M weights, {nbytes / 1e6:.0f} MB {dtype}; "
        f"read {read:.1f} GB/s, matmul peak {peak:.1f} GFLOP/s, {torch.get_num_threads()} threads"
    )
    plain = linear_stack(shapes, dtype)
    packed = linear_stack(shapes, dtype)
    if prepack_linears(packed, batch_hint=16) == 0:
        print("oneDNN packing is not available for this dtype here: `packed` is plain")
    variants: dict[str, Any] = {"plain": plain, "packed": packed}
    compile_s = None
    if a.inductor:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        inductor_config.max_autotune = True
        inductor_config.max_autotune_gemm_backends = "CPP,ATEN"
        variants["inductor"] = torch.compile(linear_stack(shapes, dtype), dynamic=False)

    results: list[dict[str, Any]] = []
    header = f"{'variant':9s} {'rows':>4s} {'ms':>7s} {'GB/s':>6s} {'GFLOP/s':>8s} "
    print(header + f"{'x sum of bounds':>15s} {'x larger bound':>14s}")
    with torch.inference_mode():
        for m in rows:
            xs = {i: torch.randn(m, i, dtype=dtype) for i in {i for _, i in shapes}}
            t_mem, t_flop = nbytes / read / 1e9, 2 * m * weights / peak / 1e9
            want = plain(xs)
            for name, module in variants.items():
                t0 = time.perf_counter()
                got = module(xs)  # inductor compiles (and autotunes) for this row count here
                if name == "inductor":
                    compile_s = (compile_s or 0.0) + time.perf_counter() - t0
                pairs = zip(got, want, strict=True)
                err = max(float((g.float() - w.float()).abs().max()) for g, w in pairs)
                if err > tolerance:
                    raise BenchFailed(f"{name} at {m} rows differs from F.linear by {err:.3g}")
                s = best_s(lambda module=module, xs=xs: module(xs), a.repeats)
                rec = {
                    "variant": name,
                    "rows": m,
                    "max_abs_diff": err,
                    "seconds": s,
                    "gb_s": nbytes / s / 1e9,
                    "gflop_s": 2 * m * weights / s / 1e9,
                    "memory_bound_s": t_mem,
                    "compute_bound_s": t_flop,
                    "of_sum_of_bounds": (t_mem + t_flop) / s,
                    "of_larger_bound": max(t_mem, t_flop) / s,
                }
                results.append(rec)
                print(
                    f"{name:9s} {m:4d} {s * 1e3:7.1f} {rec['gb_s']:6.1f} {rec['gflop_s']:8.1f} "
                    f"{rec['of_sum_of_bounds']:15.2f} {rec['of_larger_bound']:14.2f}"
                )
    out = write_result(
        a.results_dir,
        "linears",
        utc_stamp(started),
        {
            "benchmark": "decode-step linears vs memory and compute bounds",
            "started": started.isoformat(),
            "finished": datetime.now(UTC).isoformat(),
            "model_dir": str(model_dir),
            "dtype": str(dtype),
            "linears": len(shapes),
            "weights": weights,
            "bytes": nbytes,
            "read_gb_s": read,
            "matmul_peak_gflop_s": peak,
            "packed_layers": packed_count(packed),
            "inductor_compile_s": compile_s,
            "results": results,
        },
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
