from __future__ import annotations

import csv
import json
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chattune.data.download import download_dataset, rows_for_pc
from chattune.data.formats import prompt_id
from chattune.data.schema import INVALID_JSON, MISSING_MESSAGES
from chattune.errors import DatasetError, DatasetInvalid, InvalidParameter
from tests.data.helpers import chat, table_rows, write_jsonl


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# ---- the hub: fail fast without network -------------------------------------------------


def test_hub_offline_env_fails_fast_naming_chitchat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        download_dataset("HuggingFaceH4/ultrachat_200k", tmp_path / "d", 5)
    assert time.monotonic() - start < 10
    assert "cannot be reached" in info.value.message
    assert "HF_HUB_OFFLINE=1" in info.value.message
    assert "--dataset chitchat" in (info.value.fix or "")
    assert not (tmp_path / "d").exists()


def test_hub_probe_of_a_closed_port_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    start = time.monotonic()
    with pytest.raises(DatasetError) as info:
        download_dataset("HuggingFaceH4/ultrachat_200k", tmp_path / "d", 5)
    assert time.monotonic() - start < 10
    assert f"cannot be reached at {endpoint}" in info.value.message
    assert "--dataset chitchat" in (info.value.fix or "")


def test_hub_error_through_the_cli(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "true")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    res = cli(
        "data", "download", "--dataset", "HuggingFaceH4/ultrachat_200k",
        "--download-dir", tmp_path, "--split-pc", "5",
    )  # fmt: skip
    assert res.code == 2
    assert (
        "error: Dataset 'HuggingFaceH4/ultrachat_200k' is on the Hugging Face Hub" in res.flat_err
    )
    assert "--dataset chitchat" in res.flat_err


class FakeSplit:
    """Stands in for a `datasets.Dataset` slice: rows, len, info, select."""

    def __init__(self, rows: list[dict], total: int) -> None:
        self.rows = rows
        self.info = type("Info", (), {"splits": {}})()
        self.total = total

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def select(self, idx: range) -> FakeSplit:
        return FakeSplit([self.rows[i] for i in idx], self.total)


def test_hub_path_slices_each_split_and_converts_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    from chattune.data import hub

    calls: list[str] = []
    data = {
        "train": [{"instruction": f"i{n}", "output": f"o{n}"} for n in range(40)],
        "test": [{"instruction": f"t{n}", "output": f"u{n}"} for n in range(20)],
    }

    def load_dataset(name: str, split: str) -> FakeSplit:
        calls.append(f"{name}:{split}")
        base, _, pc = split.partition("[:")
        rows = data[base]
        n = round(int(pc.rstrip("%]")) * len(rows) / 100) if pc else len(rows)
        return FakeSplit(rows[:n], len(rows))

    monkeypatch.setattr(hub, "check_hub", lambda dataset: None)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name: ["train", "test"])
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)

    res = download_dataset("org/alpaca-like", tmp_path, 10)
    assert calls == ["org/alpaca-like:train[:10%]", "org/alpaca-like:test[:10%]"]
    assert [(s.name, s.rows) for s in res.splits] == [("train", 4), ("test", 2)]
    assert res.source == "hub"
    assert read_rows(tmp_path / "test.jsonl")[1] == {
        "prompt": "t1",
        "prompt_id": prompt_id("t1"),
        "messages": [{"role": "user", "content": "t1"}, {"role": "assistant", "content": "u1"}],
    }

    calls.clear()
    res = download_dataset("org/alpaca-like", tmp_path, 12.5)  # not a whole percent
    assert calls == ["org/alpaca-like:train", "org/alpaca-like:test"]
    assert [(s.name, s.rows) for s in res.splits] == [("train", 5), ("test", 2)]


def test_hub_load_failure_is_a_dataset_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    from chattune.data import hub

    def missing(name: str) -> list[str]:
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(hub, "check_hub", lambda dataset: None)
    monkeypatch.setattr(datasets, "get_dataset_split_names", missing)
    with pytest.raises(DatasetError) as info:
        download_dataset("org/nope", tmp_path, 5)
    assert "split names of hub dataset 'org/nope' cannot be read" in info.value.message
    assert "doesn't exist on the Hub" in info.value.message
    assert "owner/name" in (info.value.fix or "")


# ---- --split-pc ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["0", "-5", "100.5", "abc", "nan", "inf", ""])
def test_split_pc_outside_0_100_is_rejected(cli, tmp_path: Path, bad: str) -> None:
    res = cli("data", "download", "--dataset", "chitchat", "--download-dir", tmp_path,
              "--split-pc", bad)  # fmt: skip
    assert res.code == 2
    assert f"--split-pc is {bad!r}; it must be a percentage greater than 0 and at most 100" in (
        res.flat_err
    )
    assert "fix: pass e.g. `--split-pc 5`" in res.flat_err
    assert list(tmp_path.iterdir()) == []


def test_split_pc_api_rejects_zero(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="--split-pc is 0"):
        download_dataset("chitchat", tmp_path, 0)


def test_rows_for_pc_rounds_like_datasets() -> None:
    assert rows_for_pc(1000, 5) == 50
    assert rows_for_pc(10, 25) == 2  # 2.5 -> 2 (half to even, as datasets' round())
    assert rows_for_pc(10, 35) == 4  # 3.5 -> 4
    assert rows_for_pc(7, 100) == 7
    assert rows_for_pc(3, 0.1) == 0


# ---- local files --------------------------------------------------------------------------


def test_local_jsonl_first_percent_converted(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(40)])
    res = download_dataset(str(src), tmp_path / "out", 25)
    assert res.source == "local"
    [split] = res.splits
    assert (split.name, split.rows, split.source_rows) == ("train", 10, 40)
    rows = read_rows(tmp_path / "out" / "train.jsonl")
    assert [r["prompt"] for r in rows] == [f"q{i}" for i in range(10)]
    assert rows[3] == {
        "prompt": "q3",
        "prompt_id": prompt_id("q3"),
        "messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}],
    }


def test_local_folder_of_mixed_formats(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(
        src / "train.jsonl",
        [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
    )
    (src / "test.json").write_text(
        json.dumps([{"instruction": "Add.", "input": "1+1", "output": "2"}]), encoding="utf-8"
    )
    with (src / "valid.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "messages"])
        msgs = [{"role": "user", "content": 'a,\n"b"'}, {"role": "assistant", "content": "c"}]
        w.writerow(["1", json.dumps(msgs)])
    pq.write_table(
        pa.table(
            {
                "messages": [
                    [{"role": "user", "content": "p"}, {"role": "assistant", "content": "q"}]
                ],
                "prompt": ["p"],
            }
        ),
        src / "extra.parquet",
    )
    res = download_dataset(str(src), tmp_path / "out", 100)
    assert sorted(s.name for s in res.splits) == ["extra", "test", "train", "valid"]
    out = tmp_path / "out"
    assert read_rows(out / "train.jsonl")[0]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    assert read_rows(out / "test.jsonl")[0]["messages"] == [
        {"role": "user", "content": "Add.\n\n1+1"},
        {"role": "assistant", "content": "2"},
    ]
    assert read_rows(out / "valid.jsonl")[0]["messages"] == msgs
    assert read_rows(out / "valid.jsonl")[0]["prompt"] == 'a,\n"b"'
    assert read_rows(out / "extra.jsonl")[0] == {
        "prompt": "p",
        "prompt_id": prompt_id("p"),
        "messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "q"}],
    }


def test_local_unreadable_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "train.jsonl",
        [chat("a", "b"), "{broken", {"text": "no format"}, chat("c"), chat("d", "e")],
    )
    res = download_dataset(str(src), tmp_path / "out", 100)
    [split] = res.splits
    assert split.rows == 3  # chat("c") converts, but breaks the schema: kept and counted
    assert split.dropped == {INVALID_JSON: 1, MISSING_MESSAGES: 1}
    assert split.schema_invalid == 1
    assert [r["prompt"] for r in read_rows(tmp_path / "out" / "train.jsonl")] == ["a", "c", "d"]


def test_local_file_with_nothing_convertible_fails_and_keeps_the_old_output(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("previous\n")
    src = write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DatasetInvalid) as info:
        download_dataset(str(src), out, 100)
    assert "none of the first 2 rows can be converted: missing messages (2)" in info.value.message
    assert f"chattune data validate {src}" in (info.value.fix or "")
    assert (out / "train.jsonl").read_text() == "previous\n"
    assert [p.name for p in out.iterdir()] == ["train.jsonl"]  # no temporary file left


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        download_dataset(str(tmp_path / "nope.jsonl"), tmp_path / "out", 5)


def test_cli_download_prints_the_summary(cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(20)])
    res = cli("data", "download", "--dataset", src, "--download-dir", tmp_path / "out",
              "--split-pc", "50%")  # fmt: skip
    assert res.code == 0, res.err
    assert "first 50% of each split" in res.out
    # split, rows, split rows, dropped, schema-invalid, file
    assert table_rows(res.out) == [["train", "10", "20", "0", "0", "train.jsonl"]]
    assert f"written to {tmp_path / 'out'}" in res.flat_out
    assert len(read_rows(tmp_path / "out" / "train.jsonl")) == 10


def test_cli_download_defaults_to_the_workspace(cli, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "mydata.jsonl", [chat("q", "a")])
    ws = tmp_path / "ws"
    res = cli("data", "download", "--dataset", src, "--workspace", ws, "--json")
    assert res.code == 0, res.err
    out = ws / "datasets" / "mydata" / "mydata.jsonl"
    assert json.loads(res.out)["splits"][0]["path"] == str(out)
    assert read_rows(out)[0]["prompt"] == "q"


def test_cli_download_of_a_dotdot_folder_stays_in_datasets(cli, tmp_path: Path) -> None:
    """The default folder is named after the source: `d/sub/..` is named `..`, which put
    the splits in the workspace's root instead of `datasets/<name>/`."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write_jsonl(tmp_path / "d" / "train.jsonl", [chat("q", "a")])
    ws = tmp_path / "ws"
    res = cli("data", "download", "--dataset", tmp_path / "d" / "sub" / "..", "--workspace", ws)
    assert res.code == 0, res.err
    assert (ws / "datasets" / "dataset" / "train.jsonl").is_file()
    assert not (ws / "train.jsonl").exists()
