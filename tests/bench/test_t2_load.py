"""T2 serving benchmark: the requests, the request bodies and the statistics of a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from t2_load import Record, build_requests, percentile, request_body, summarize  # noqa: E402
from t2_report import agreement, summarize_runs, targets  # noqa: E402
from t2_serving import requests_for  # noqa: E402


def _conv(n_turns: int, tag: str) -> dict:
    msgs = []
    for i in range(n_turns):
        msgs += [
            {"role": "user", "content": f"{tag} u{i}"},
            {"role": "assistant", "content": f"{tag} a{i}"},
        ]
    return {"prompt": msgs[0]["content"], "messages": msgs}


@pytest.fixture
def test_gen(tmp_path: Path) -> Path:
    path = tmp_path / "test_gen.jsonl"
    rows = [_conv(1, "A"), _conv(5, "B"), _conv(2, "C")]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_requests_end_on_a_user_turn_of_the_first_three_and_cycle(test_gen: Path) -> None:
    reqs = build_requests(test_gen, 20)
    assert len(reqs) == 20
    distinct = {json.dumps(r) for r in reqs}
    # A: 1 cut, B: 3 (turns 1..3 of 5), C: 2
    assert len(distinct) == 6
    assert all(r[-1]["role"] == "user" for r in reqs)
    assert max(len(r) for r in reqs) == 5  # user, assistant, user, assistant, user
    assert reqs[:6] == reqs[6:12]  # cycled in the same shuffled order
    assert build_requests(test_gen, 20) == reqs  # fixed seed


def test_no_usable_conversation_is_refused(tmp_path: Path) -> None:
    from common import BenchFailed

    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n")
    with pytest.raises(BenchFailed, match="no conversation"):
        build_requests(path, 4)


def test_mlflow_greedy_is_top_k_1_and_openai_streams_with_usage() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    body = request_body("mlflow", msgs, 64, stream=False, model=None)
    assert body == {"messages": msgs, "max_tokens": 64, "top_k": 1}
    body = request_body("openai", msgs, 64, stream=True, model="m")
    assert body["temperature"] == 0.0 and body["model"] == "m"
    assert body["stream_options"] == {"include_usage": True}


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 95) == pytest.approx(1.95)
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_summary_counts_tokens_of_answers_and_errors() -> None:
    records = [
        Record(0, 0.0, 1.0, 0.2, "a b c", 4, "length"),
        Record(1, 0.5, 2.5, 0.3, "d e", 3, "stop"),
        Record(2, 0.5, 0.6, 0.1, "", None, None, error="HTTP 429"),
    ]
    s = summarize(records, wall=4.0, count_tokens=lambda t: len(t.split()))
    assert s["errors"] == 1 and s["requests"] == 3
    assert s["output_tokens"] == 5 and s["output_tok_s"] == 1.25
    assert s["usage_output_tokens"] == 7
    assert s["latency_p50_s"] == pytest.approx(1.5)
    assert s["requests_s"] == 0.5


def test_default_request_counts() -> None:
    assert requests_for("chattune", 16, None) == 16  # one wave of 16
    assert requests_for("mlflow_serve", 16, None) == 16
    assert requests_for("chattune", 32, None) == 64  # sweep levels outside the table
    assert requests_for("mlflow_serve", 4, 64) == 64  # --requests wins


class _Tok:
    """Whitespace 'tokenizer' with the call shape of a HF tokenizer."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": text.split()}


def _run(name: str, rep: int, probe: str, tok_s: float, p95: float) -> dict:
    level = {"concurrency": 16, "output_tok_s": tok_s, "latency_p95_s": p95, "requests": 2,
             "records": [{"idx": 0, "text": probe}, {"idx": 1, "text": "x y"}]}  # fmt: skip
    return {"contender": name, "repeat": rep, "probe_text": probe, "levels": [level]}


def test_agreement_fails_a_probe_that_parts_early_and_passes_a_shared_prefix() -> None:
    same = "w " * 40
    runs = [
        _run("chattune", 0, same, 100, 1),
        _run("transformers_serve", 0, same[:-2] + "z", 50, 2),  # differs at token 40
        _run("mlflow_serve", 0, "other answer entirely", 10, 4),
    ]
    out = agreement(runs, ["chattune", "transformers_serve", "mlflow_serve"], 32, None, _Tok())
    assert out["probe"]["transformers_serve"]["shared_tokens"] == 39
    assert len(out["problems"]) == 1 and "mlflow_serve" in out["problems"][0]
    assert out["load_vs_reference"]["mlflow_serve"]["16"]["identical_share"] == 0.5


def test_agreement_accepts_answers_that_part_at_a_tie_and_only_those() -> None:
    """In bf16 two next tokens can round to the same logit: servers break such a tie
    differently. The judge is asked about the first token where they part, with the shared
    prefix; an answer it calls no tie still fails."""
    runs = [
        _run("chattune", 0, "I'm so sorry to hear", 1, 1),
        _run("transformers_serve", 0, "I'm glad to hear that", 1, 1),  # parts at token 1
        _run("mlflow_serve", 0, "Hello there friend", 1, 1),  # parts at token 0
    ]
    asked: list[tuple] = []

    def tie(shared: list, ref_token: str, my_token: str) -> dict | None:
        asked.append((list(shared), ref_token, my_token))
        return {"logits": [18.125, 18.125]} if (ref_token, my_token) == ("so", "glad") else None

    names = ["chattune", "transformers_serve", "mlflow_serve"]
    out = agreement(runs, names, 32, None, _Tok(), tie)
    assert asked == [(["I'm"], "so", "glad"), ([], "I'm", "Hello")]
    assert out["probe"]["transformers_serve"]["parted_at_tie"] == {"logits": [18.125, 18.125]}
    assert "parted_at_tie" not in out["probe"]["mlflow_serve"]
    assert len(out["problems"]) == 1 and "mlflow_serve" in out["problems"][0]
    assert "transformers_serve 1/5 tokens (then a tie)" in out["summary"]


def test_answers_that_change_between_repeats_pass_at_a_tie_only() -> None:
    """mlflow serve's `top_k: 1` keeps every token tied at the top and samples among them."""
    runs = [_run("mlflow_serve", 0, "a so b", 1, 1), _run("mlflow_serve", 1, "a glad c", 1, 1)]

    def tie(shared: list, x: str, y: str) -> dict | None:
        return {"logits": [1.0, 1.0]} if {x, y} == {"so", "glad"} else None

    out = agreement(runs, ["mlflow_serve"], 1, None, _Tok(), tie)
    assert out["problems"] == []
    assert out["probe"]["mlflow_serve"]["repeats_parted_at_ties"] == [
        {"shared_tokens": 1, "tie": {"logits": [1.0, 1.0]}}
    ]
    runs.append(_run("mlflow_serve", 2, "a so d", 1, 1))  # parts from "a so b" at no tie
    out = agreement(runs, ["mlflow_serve"], 1, None, _Tok(), tie)
    assert any("changed between repeats" in p for p in out["problems"])


def test_agreement_flags_a_probe_that_changes_between_repeats() -> None:
    runs = [_run("chattune", 0, "a b", 1, 1), _run("chattune", 1, "a c", 1, 1)]
    out = agreement(runs, ["chattune"], 1, None, _Tok())
    assert any("changed between repeats" in p for p in out["problems"])


def test_ratios_are_taken_within_a_repeat_and_targets_read_them() -> None:
    names = ["chattune", "transformers_serve", "mlflow_serve"]
    runs = [
        _run("chattune", 0, "a", 300, 1.0),
        _run("transformers_serve", 0, "a", 100, 2.0),
        _run("mlflow_serve", 0, "a", 20, 4.0),
        _run("chattune", 1, "a", 100, 1.0),
        _run("transformers_serve", 1, "a", 100, 1.0),
        _run("mlflow_serve", 1, "a", 20, 4.0),
    ]
    s = summarize_runs(runs, names, [16])
    row = s["chattune"]["16"]
    assert row["tok_s_ratio_vs_transformers_serve"] == 2.0  # median of 3.0 and 1.0
    assert row["tok_s_ratio_vs_mlflow_serve"] == 10.0
    assert row["repeats_ok"] == 2
    t = targets(s)
    assert t["c16 tok/s vs transformers_serve >= 2x"]["met"]
    assert t["c16 p95 vs mlflow_serve <= 1x"]["met"]
