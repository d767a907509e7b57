"""T1 length-aware batching on and off: how many tokens an epoch computes, by batching rule.

The same tokenized conversations (chattune's preprocess of `--data`, truncated to
`--max-seq-length`) batched four ways, for an epoch at 4 sequences / 4 x 512 tokens a step:

  padded, file order     4 conversations per step, padded to the longest (TRL's default)
  padded, by length      4 conversations per step, sorted by length first (group_by_length)
  packed, in order       padding-free rows of 2048 tokens filled in file order (next fit)
  packed, best fit       chattune's `packing.pack_batches`: best-fit decreasing

No timing: a step's cost follows the tokens it computes (padding included), so the ratio of
computed tokens is the ratio of epoch time at the same tokens/s. Deterministic; seconds.

    .venv/bin/python bench/t1_batching.py --data PATH.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common import default_model_dir, parser, utc_stamp, write_result


def padded(lengths: list[int], batch: int) -> dict[str, Any]:
    """Steps and computed tokens of batches of `batch` in the given order, padded."""
    groups = [lengths[i : i + batch] for i in range(0, len(lengths), batch)]
    return {"steps": len(groups), "computed_tokens": sum(len(g) * max(g) for g in groups)}


def next_fit(lengths: list[int], budget: int) -> dict[str, Any]:
    """Steps of padding-free rows filled in order; a row ends when the next does not fit."""
    rows, room = 0, 0
    for n in lengths:
        if n > room:
            rows, room = rows + 1, budget
        room -= n
    return {"steps": rows, "computed_tokens": sum(lengths)}


def best_fit(lengths: list[int], budget: int) -> dict[str, Any]:
    from chattune.train.packing import pack_batches

    return {"steps": len(pack_batches(lengths, budget, 42)), "computed_tokens": sum(lengths)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, "model_dir", "work_dir", "results_dir")
    ap.add_argument("--data", type=Path, required=True, help="a conversations .jsonl")
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args(argv)

    import pyarrow.parquet as pq

    from chattune.train.preprocess import PreprocessConfig, run_preprocess

    stamp = utc_stamp()
    model_dir = (a.model_dir or default_model_dir()).resolve()
    cfg = PreprocessConfig(
        train_file=a.data,
        validation_file=a.data,
        model_dir=model_dir,
        max_seq_length=a.max_seq_length,
        output_dir=a.work_dir / f"t1b-{stamp}",
    )
    run_preprocess(cfg, lambda _msg: None)
    table = pq.read_table(cfg.output_dir / "train.parquet", columns=["input_ids"])
    lengths = [len(x) for x in table.column("input_ids").to_pylist()]
    budget = a.batch * a.max_seq_length
    rules = {
        "padded, file order": padded(lengths, a.batch),
        "padded, by length": padded(sorted(lengths), a.batch),
        "packed, in order": next_fit(lengths, budget),
        "packed, best fit (chattune)": best_fit(lengths, budget),
    }
    real = sum(lengths)
    base = rules["padded, file order"]["computed_tokens"]
    print(f"{len(lengths)} conversations, {real:,} tokens, budget {budget} tokens per step")
    for name, r in rules.items():
        slots = r["steps"] * budget
        r["fill"] = real / slots  # of the step's token budget, for packed and padded alike
        r["padding_share"] = 1 - real / r["computed_tokens"]
        r["epoch_time_vs_padded_file_order"] = r["computed_tokens"] / base
        r["steps_vs_best_fit"] = r["steps"] / rules["packed, best fit (chattune)"]["steps"]
        print(
            f"  {name:<28} {r['steps']:>6} steps  computed {r['computed_tokens']:>11,} "
            f"(padding {100 * r['padding_share']:4.1f}%)  budget filled "
            f"{100 * r['fill']:5.1f}%  epoch time x{r['epoch_time_vs_padded_file_order']:.2f}"
        )
    out = write_result(
        a.results_dir,
        "t1b",
        stamp,
        {
            "benchmark": "T1 length-aware batching",
            "settings": {
                "data": str(a.data),
                "model_dir": str(model_dir),
                "batch": a.batch,
                "max_seq_length": a.max_seq_length,
            },
            "conversations": len(lengths),
            "tokens": real,
            "rules": rules,
        },
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
