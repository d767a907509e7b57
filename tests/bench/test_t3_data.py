"""The T3 harness: its data is deterministic, and its checks catch lost rows and token counts
that the drops do not explain (the timing itself is not tested here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bench.conftest import load_bench


@pytest.fixture(scope="module")
def t3() -> Any:
    return load_bench("t3_data")


def test_data_is_a_seeded_resample_of_chitchat_written_once(t3: Any, tmp_path: Path) -> None:
    a = t3.make_data(300, 42, tmp_path)
    lines = a.read_text().splitlines()
    assert len(lines) == 300
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"messages"} for r in rows)  # messages form: TRL reads it as is
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and len(roles) >= 2
    assert len({json.dumps(r) for r in rows}) < 300  # drawn with replacement from ~4k
    before = a.stat().st_mtime_ns
    assert t3.make_data(300, 42, tmp_path) == a and a.stat().st_mtime_ns == before  # cached
    other = t3.make_data(300, 7, tmp_path).read_text()
    assert other != a.read_text()
    again = t3.make_data(300, 42, tmp_path / "again").read_text()
    assert again == a.read_text()


def record(kept: int, dropped: int, tokens: int, trl_tokens: int) -> tuple[dict, dict]:
    ct = {
        "convert": {"rows_written": 100},
        "preprocess": {
            "conversations_kept": kept,
            "dropped": {"truncated_no_assistant": dropped} if dropped else {},
            "tokens": tokens,
            "label_tokens": tokens // 3,
            "train_label_tokens": tokens // 4,
            "rows": {"train": 80},
        },
        "pack": {"max_bin_tokens": 2048, "bin_capacity": 2048, "train_rows": 80},
    }
    trl = {"trl": {"conversations_kept": 100, "max_row_tokens": 512, "tokens": trl_tokens}}
    return ct, trl


def test_checks_pass_when_drops_explain_the_difference(t3: Any) -> None:
    ct, trl = record(kept=98, dropped=2, tokens=30_000, trl_tokens=30_000 + 2 * 512)
    assert t3.check_pair(100, 512, ct, trl) == []


@pytest.mark.parametrize(
    ("kept", "dropped", "tokens", "trl_tokens", "problem"),
    [
        (97, 2, 30_000, 31_024, "kept 97 and dropped 2 of 100"),
        (98, 2, 30_000, 30_000, "unexplained"),  # TRL's 2 extra rows of 512 tokens missing
        (100, 0, 30_000, 31_000, "unexplained"),
    ],
)
def test_checks_catch_lost_rows_and_token_gaps(
    t3: Any, kept: int, dropped: int, tokens: int, trl_tokens: int, problem: str
) -> None:
    ct, trl = record(kept, dropped, tokens, trl_tokens)
    problems = t3.check_pair(100, 512, ct, trl)
    assert any(problem in p for p in problems), problems


def test_checks_catch_missing_labels_and_overfull_bins(t3: Any) -> None:
    ct, trl = record(kept=100, dropped=0, tokens=30_000, trl_tokens=30_000)
    ct["preprocess"]["label_tokens"] = 0
    ct["pack"]["max_bin_tokens"] = 2049
    trl["trl"]["max_row_tokens"] = 513
    problems = " ".join(t3.check_pair(100, 512, ct, trl))
    assert "labels" in problems and "bin of 2049" in problems and "row of 513" in problems


def test_ratio_is_taken_per_repeat_then_the_median(t3: Any) -> None:
    def ct(rep: int, conv_s: float) -> dict[str, Any]:
        step = {"seconds": 1.0, "cpu_s": 1.0, "peak_rss_mb": 100.0, "conversations_in": 10}
        return {
            "contender": "chattune",
            "repeat": rep,
            "conv_s": conv_s,
            "seconds": 1.0,
            "cpu_s": 1.0,
            "process_wall_s": 2.0,
            "peak_rss_mb": 500.0,
            "tree_peak_rss_mb": 600.0,
            "conversations_kept": 10,
            "tokens": 100,
            "label_tokens": 30,
            **{s: step for s in t3.CHATTUNE_STEPS},
        }

    def trl(rep: int, conv_s: float) -> dict[str, Any]:
        return {**ct(rep, conv_s), "contender": "trl"}

    runs = [ct(0, 30), trl(0, 10), ct(1, 40), trl(1, 20), ct(2, 90), trl(2, 20)]
    summary = t3.summarize(runs, ["chattune", "trl"])
    assert summary["chattune"]["ratio_vs_trl"] == 3.0  # median of 3, 2, 4.5
    assert summary["chattune"]["conv_s"] == 40
    targets = t3.targets(summary)
    assert targets["rate_met"] and targets["rss_met"] and targets["peak_rss_mb"] == 600.0
    assert "| chattune | 40 |" in t3.table(summary)
