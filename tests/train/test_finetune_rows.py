"""The finetune step keeps the tokenized rows as arrow columns and makes a row's lists only
when a batch asks for it: the same rows as reading the parquet whole, far less memory."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from chattune.train.finetune import FinetuneConfig, _datasets, _Rows
from chattune.train.params import FinetuneParams


def write_split(path: Path, rows: list[list[int]]) -> list[dict[str, list[int]]]:
    table = pa.table(
        {
            "input_ids": pa.array(rows, pa.list_(pa.int32())),
            "labels": pa.array([[-100, *r[1:]] for r in rows], pa.list_(pa.int32())),
            "num_tokens": pa.array([len(r) for r in rows], pa.int32()),
        }
    )
    # two row groups: the columns come back chunked
    pq.write_table(table, path, row_group_size=max(1, len(rows) // 2))
    return table.select(["input_ids", "labels"]).to_pylist()


def test_rows_are_the_parquet_rows(tmp_path: Path) -> None:
    rows = [list(range(i, i + 3 + i % 5)) for i in range(9)]
    expected = write_split(tmp_path / "train.parquet", rows)
    got = _Rows(tmp_path / "train.parquet")
    assert len(got) == 9
    assert [got[i] for i in range(len(got))] == expected
    assert got.lengths() == [len(r) for r in rows]


def test_packed_bins_hold_every_row_once(tmp_path: Path) -> None:
    data = tmp_path / "prep"
    data.mkdir()
    rows = [list(range(1, 2 + i % 7)) for i in range(40)]
    expected = write_split(data / "train.parquet", rows)
    write_split(data / "validation.parquet", rows[:5])
    cfg = FinetuneConfig(
        model_dir=tmp_path,
        data_dir=data,
        output_dir=tmp_path / "out",
        params=FinetuneParams(per_device_train_batch_size=2, max_seq_length=8),
        lora_target_modules=[],
        max_seq_length=8,
    )
    train, val, _collator, per_step = _datasets(cfg)
    assert per_step == 1 and len(val) > 0
    seen = sorted(ex["input_ids"] for i in range(len(train)) for ex in train[i])
    assert seen == sorted(r["input_ids"] for r in expected)
    assert all(sum(len(ex["input_ids"]) for ex in train[i]) <= 16 for i in range(len(train)))
