from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from chattune.data.stats import dataset_stats, model_context
from tests.data.helpers import chat, table_rows, write_jsonl

LONG = "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. " * 30  # well over 256 tokens


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rows = [
        chat("Hello, how are you doing today?", "I am fine, thank you."),
        chat("Can you tell me a joke?", "No.", "Why not?", "I am a tiny model.", system="Be kind."),
        {"conversations": [{"from": "human", "value": "What is the capital of France?"},
                           {"from": "gpt", "value": "Paris is the capital of France."}]},
        chat("Only a question"),  # invalid: one message
        chat("Count for me.", LONG),
    ]  # fmt: skip
    return write_jsonl(tmp_path / "d.jsonl", rows)


def expected_lengths(model_dir: Path, path: Path) -> list[int]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "conversations" in row:
            row = {"messages": [{"role": "user" if c["from"] == "human" else "assistant",
                                 "content": c["value"]} for c in row["conversations"]]}  # fmt: skip
        if len(row["messages"]) < 2:
            continue
        text = tok.apply_chat_template(row["messages"], tokenize=False)
        out.append(len(tok(text, add_special_tokens=False)["input_ids"]))
    return out


def test_stats_without_a_model(data_file: Path) -> None:
    stats = dataset_stats(data_file, preview_rows=2)
    assert (stats.rows, stats.valid, stats.invalid) == (5, 4, 1)
    assert (stats.turns_min, stats.turns_max) == (2, 5)
    assert stats.turns_mean == pytest.approx((2 + 5 + 2 + 2) / 4)
    assert [p.roles for p in stats.preview] == [
        ["user", "assistant"],
        ["system", "user", "assistant", "user", "assistant"],
    ]
    assert stats.preview[1].last_assistant == "I am a tiny model."
    assert stats.tokens is None


def test_token_stats_match_the_chat_template(tiny_llama_dir: Path, data_file: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert model_context(tok) == 256  # from config.json: the tokenizer sets no limit
    stats = dataset_stats(data_file, tokenizer=tok, batch_size=2)
    lengths = expected_lengths(tiny_llama_dir, data_file)
    t = stats.tokens
    assert t is not None
    assert t.count == 4
    assert (t.min, t.max) == (min(lengths), max(lengths))
    assert t.mean == pytest.approx(np.mean(lengths))
    assert t.p90 == pytest.approx(np.percentile(lengths, 90))
    assert max(lengths) > 256 > sorted(lengths)[-2]
    assert (t.context, t.over_context) == (256, 1)


def test_cli_show_prints_preview_and_token_stats(
    cli, tiny_llama_dir: Path, data_file: Path
) -> None:
    res = cli("data", "show", data_file, "--model", tiny_llama_dir, "--rows", "4")
    assert res.code == 0, res.err
    rows = table_rows(res.out)
    preview = {r[0]: r for r in rows[:4]}
    assert preview["1"][1:] == ["U A", "Hello, how are you doing today?", "I am fine, thank you."]
    assert preview["2"][1] == "S U A U A"
    assert preview["3"][2:] == ["What is the capital of France?", "Paris is the capital of France."]
    assert preview["4"][2].startswith("invalid: one message or fewer")
    assert "rows: 5 (4 valid, 1 invalid)" in res.flat_out
    assert "turns per row: min 2, mean 2.8, max 5" in res.flat_out
    lengths = expected_lengths(tiny_llama_dir, data_file)
    [token_row] = rows[4:]
    # rows, min, mean, p50, p90, p99, max, context, over context
    assert token_row[0] == "4"
    assert token_row[1] == str(min(lengths))
    assert token_row[6] == f"{max(lengths):,}"
    assert token_row[7:] == ["256", "1"]


def test_cli_show_truncates_long_messages(cli, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [chat("q " * 100, "a")])
    res = cli("data", "show", f)
    assert res.code == 0
    cell = table_rows(res.out)[0][2]
    assert cell.endswith("…") and len(cell) == 80


def test_cli_show_rejects_a_model_that_is_not_there(cli, tmp_path: Path, workspace) -> None:
    f = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    res = cli("data", "show", f, "--model", tmp_path / "no-such-model")
    assert res.code == 2
    assert "no-such-model" in res.flat_err


def test_cli_show_json(cli, tiny_llama_dir: Path, data_file: Path) -> None:
    res = cli("data", "show", data_file, "--model", tiny_llama_dir, "--rows", "1", "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    assert (data["rows"], data["valid"], data["invalid"]) == (5, 4, 1)
    assert data["formats"] == {"openai": 4, "sharegpt": 1}
    assert data["turns"] == {"min": 2, "mean": 2.75, "max": 5}
    assert data["preview"][0]["roles"] == ["user", "assistant"]
    assert data["tokens"]["count"] == 4
    assert data["tokens"]["max"] == max(expected_lengths(tiny_llama_dir, data_file))
