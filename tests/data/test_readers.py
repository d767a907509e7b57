from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chattune.data import readers
from chattune.data.readers import count_records, iter_records, split_files
from chattune.errors import DatasetError


def test_jsonl_skips_blank_lines_and_reports_bad_ones_by_line(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2\n[3]\n   \n{"a": 4}\n', encoding="utf-8")
    recs = list(iter_records(f))
    assert [r.line for r in recs] == [1, 3, 4, 6]
    assert recs[0].value == {"a": 1} and recs[0].error is None
    assert recs[1].value is None and "Expecting" in (recs[1].error or "")
    assert recs[2].value == [3]
    assert count_records(f) == 4


def test_jsonl_reports_non_utf8_line(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    recs = list(iter_records(f))
    assert recs[1].line == 2 and "UTF-8" in (recs[1].error or "")


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_json_array_streams_elements_with_their_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    # a tiny chunk makes elements, strings and numbers straddle the read window
    monkeypatch.setattr(readers, "_CHUNK", chunk)
    f = tmp_path / "a.json"
    f.write_text(
        '[\n  {"text": "first, with ] and , inside"},\n  12345678,\n'
        '  {"nested": {"x": [1, 2]}},\n\n  "last"\n]\n',
        encoding="utf-8",
    )
    recs = list(iter_records(f))
    assert [r.value for r in recs] == [
        {"text": "first, with ] and , inside"},
        12345678,
        {"nested": {"x": [1, 2]}},
        "last",
    ]
    assert [r.line for r in recs] == [2, 3, 4, 6]
    assert all(r.error is None for r in recs)
    assert count_records(f) == 4


def test_json_array_error_names_the_line_and_stops(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text('[\n {"a": 1},\n {"a": oops},\n {"a": 3}\n]', encoding="utf-8")
    recs = list(iter_records(f))
    assert recs[0].value == {"a": 1}
    assert recs[1].line == 3
    assert recs[1].value is None and "cannot be read" in (recs[1].error or "")
    assert len(recs) == 2


def test_json_array_missing_bracket(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text('[{"a": 1},\n{"a": 2}', encoding="utf-8")
    recs = list(iter_records(f))
    assert [r.value for r in recs[:2]] == [{"a": 1}, {"a": 2}]
    assert "expected ',' or ']'" in (recs[2].error or "")


def test_empty_json_array(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text(" [ ] ", encoding="utf-8")
    assert list(iter_records(f)) == []


def test_json_file_of_json_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.json"
    f.write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    assert [r.value for r in iter_records(f)] == [{"a": 1}, {"a": 2}]


def test_csv_rows_with_multiline_cells_keep_their_first_line(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        'instruction,output\n"Say two lines.","one\ntwo"\nb,"x"\nonly-one-cell\n\nc,"y"\n',
        encoding="utf-8",
    )
    recs = list(iter_records(f))
    assert recs[0] == readers.Record(2, {"instruction": "Say two lines.", "output": "one\ntwo"})
    assert recs[1] == readers.Record(4, {"instruction": "b", "output": "x"})
    assert recs[2].line == 5 and "1 cells, the header has 2" in (recs[2].error or "")
    assert recs[3] == readers.Record(7, {"instruction": "c", "output": "y"})
    assert count_records(f) == 4


def test_parquet_rows_are_numbered(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"x": list(range(2500))}), f, row_group_size=1000)
    recs = list(iter_records(f))
    assert len(recs) == 2500 == count_records(f)
    assert recs[0] == readers.Record(1, {"x": 0})
    assert recs[-1] == readers.Record(2500, {"x": 2499})


def test_not_a_parquet_file(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    f.write_text("nope")
    with pytest.raises(DatasetError, match=r"a\.parquet cannot be read as parquet"):
        list(iter_records(f))


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as info:
        iter_records(tmp_path / "nope.jsonl")
    assert ".jsonl" in (info.value.fix or "")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"suffix '\.txt'"):
        iter_records(tmp_path / "a.txt")


def test_split_files_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "test.csv").write_text("")
    (tmp_path / "README.md").write_text("")
    assert split_files(tmp_path) == {
        "test": tmp_path / "test.csv",
        "train": tmp_path / "train.jsonl",
    }
    (tmp_path / "train.parquet").write_text("")
    with pytest.raises(DatasetError, match="two files for split 'train'"):
        split_files(tmp_path)


def test_split_files_of_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="holds no"):
        split_files(tmp_path)
