from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from chattune.data import chitchat
from chattune.data.chitchat import SPLIT_ROWS, convert_conversation, split_sizes
from chattune.data.download import DownloadResult, download_dataset
from chattune.data.formats import prompt_id
from chattune.data.schema import check_messages
from chattune.errors import DatasetError

SPLITS = ["train_sft", "test_sft", "train_gen", "test_gen"]


def kept_conversations() -> int:
    """Distinct conversations with at least two sender turns, counted straight from
    dataset.json (independently of the converter): empty utterances are ignored,
    consecutive utterances of one sender are one turn, a last user turn is not counted."""
    raw = json.loads(chitchat.chitchat_path().read_text(encoding="utf-8"))
    kept: set[tuple[str, ...]] = set()
    for conv in raw.values():
        utts = [(u["sender"], u["text"].strip()) for g in conv["messages"] for u in g]
        turns: list[tuple[str, list[str]]] = []
        for sender, text in utts:
            if not text:
                continue
            if turns and turns[-1][0] == sender:
                turns[-1][1].append(text)
            else:
                turns.append((sender, [text]))
        if len(turns) % 2 == 1 and len(turns) > 1:
            turns.pop()  # conversations end with the assistant
        if len(turns) >= 2:
            kept.add(tuple("\n".join(texts) for _, texts in turns))
    return len(kept)


def expected_rows(kept: int, pc: float) -> dict[str, int]:
    """The formula: the kept conversations are cut in ultrachat_200k's proportions,
    size_s = floor(kept * w_s / W) plus one for the largest remainders until they sum to
    `kept` (w_s the ultrachat rows of split s, W = 515,311); then the first
    round(pc * size_s / 100) rows of each split are written."""
    total = sum(SPLIT_ROWS.values())
    assert total == 207_865 + 23_110 + 256_032 + 28_304 == 515_311
    sizes = {s: kept * w // total for s, w in SPLIT_ROWS.items()}
    for s in sorted(SPLIT_ROWS, key=lambda s: -(kept * SPLIT_ROWS[s] % total))[
        : kept - sum(sizes.values())
    ]:
        sizes[s] += 1
    return {s: round(pc * n / 100) for s, n in sizes.items()}


@pytest.fixture(scope="module")
def five_pc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chitchat5")
    download_dataset("chitchat", out, 5)
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> DownloadResult:
    return download_dataset("chitchat", tmp_path_factory.mktemp("chitchat100"), 100)


def test_five_percent_gives_the_four_splits_with_expected_rows(five_pc: Path) -> None:
    kept = kept_conversations()
    # 7,168 conversations: 3,151 with a single speaker, 6 duplicates
    assert kept == 4011
    expected = expected_rows(kept, 5)
    assert expected == {"train_sft": 81, "test_sft": 9, "train_gen": 100, "test_gen": 11}
    assert sorted(p.name for p in five_pc.iterdir()) == sorted(f"{s}.jsonl" for s in SPLITS)
    for split, n in expected.items():
        lines = (five_pc / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == n, split


def test_rows_follow_the_ultrachat_schema(five_pc: Path) -> None:
    for split in SPLITS:
        for line in (five_pc / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert list(row) == ["prompt", "prompt_id", "messages"]
            assert row["prompt"] == row["messages"][0]["content"]
            assert row["prompt_id"] == prompt_id(row["prompt"])
            assert check_messages(row["messages"]) is None
            assert row["messages"][-1]["role"] == "assistant"
            assert all(set(m) == {"role", "content"} for m in row["messages"])


def test_pandas_reads_the_files_as_the_seed_does(five_pc: Path) -> None:
    df = pd.read_json(five_pc / "train_sft.jsonl", lines=True)
    assert list(df.columns) == ["prompt", "prompt_id", "messages"]
    assert len(df) == 81
    assert df["messages"].map(len).min() >= 2


def test_two_runs_write_the_same_bytes(five_pc: Path, tmp_path: Path) -> None:
    again = download_dataset("chitchat", tmp_path, 5)
    assert [s.name for s in again.splits] == SPLITS
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (
            five_pc / f"{split}.jsonl"
        ).read_bytes()


def test_splits_are_disjoint_and_hold_every_kept_conversation(full: DownloadResult) -> None:
    seen: set[str] = set()
    for s in full.splits:
        lines = set(s.path.read_text(encoding="utf-8").splitlines())
        assert len(lines) == s.rows == s.source_rows
        assert not lines & seen
        seen |= lines
    assert len(seen) == 4011
    assert [s.rows for s in full.splits] == list(split_sizes(4011).values())
    assert full.notes[chitchat.DROP_FEW_TURNS] == 3151
    assert full.notes[chitchat.DROP_DUPLICATE] == 6


def test_the_first_rows_of_a_split_are_its_prefix(five_pc: Path, full: DownloadResult) -> None:
    for split in full.splits:
        small = (five_pc / f"{split.name}.jsonl").read_text(encoding="utf-8").splitlines()
        large = split.path.read_text(encoding="utf-8").splitlines()
        assert large[: len(small)] == small


def test_convert_conversation_merges_and_alternates() -> None:
    def u(sender: str, text: str) -> dict[str, str]:
        return {"text": text, "sender": sender, "timestamp": "t"}

    conv = {
        "messages": [
            [u("a", "Hello"), u("a", " How are you? ")],
            [u("b", "good")],
            [u("b", "and you?")],  # same sender again: merged
            [u("a", "   ")],  # empty: removed, the next group is then merged
            [u("a", "fine")],
            [u("b", "great")],
            [u("a", "bye")],  # a last user turn: removed
        ]
    }
    dropped: Counter[str] = Counter()
    assert convert_conversation(conv, dropped) == [
        {"role": "user", "content": "Hello\nHow are you?"},
        {"role": "assistant", "content": "good\nand you?"},
        {"role": "user", "content": "fine"},
        {"role": "assistant", "content": "great"},
    ]
    assert dropped == {chitchat.DROP_EMPTY_UTTERANCE: 1, chitchat.DROP_TRAILING_USER: 1}


def test_split_sizes_sum_and_follow_the_proportions() -> None:
    for n in (0, 1, 7, 1000, 4017, 515_311):
        sizes = split_sizes(n)
        assert list(sizes) == SPLITS
        assert sum(sizes.values()) == n
    assert split_sizes(515_311) == SPLIT_ROWS


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chitchat.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError) as info:
        download_dataset("chitchat", Path("unused"), 5)
    assert "chitchat-dataset" in info.value.message
    assert info.value.fix == "pip install --no-deps chitchat-dataset"
