"""Tokenizing long conversations only up to a turn boundary (`ChatEncoder.encode_stream` with a
limit) gives the same truncated tokens, labels and report as tokenizing them whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from chattune.train import preprocess
from chattune.train.chat_encoder import _label_prefix, _overlaps
from chattune.train.preprocess import ChatEncoder, PreprocessConfig, run_preprocess

LIMIT = 64


def long_conv(i: int, turns: int) -> list[dict[str, str]]:
    msgs = []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}.{t}: how far is {i * t} from here?"})
        msgs.append({"role": "assistant", "content": f"About {i + t} miles, give or take {t}."})
    return msgs


@pytest.fixture(params=["llama", "phi3"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(
        "tiny_llama_dir" if request.param == "llama" else "tiny_phi3_dir"
    )


def conversations(boundary: str) -> list[list[dict[str, str]]]:
    convs = [long_conv(i, turns) for i, turns in enumerate((1, 2, 8, 20, 40, 3, 30))]
    # the first reply beyond the limit: dropped, its report needs the whole text (the first
    # reply is past the cut, then before it)
    convs.append([{"role": "user", "content": "word " * 400}, *long_conv(9, 2)[1:]])
    convs.append([{"role": "user", "content": "word " * 60}, *long_conv(9, 20)[1:]])
    # a reply that holds the boundary token itself: a cut inside a labelled span
    reply = f"look: {boundary} " * 10 + "done"
    convs.append([*long_conv(7, 10), {"role": "user", "content": "and?"}])
    convs[-1].append({"role": "assistant", "content": reply})
    convs.append(
        [
            *long_conv(8, 1),
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": reply * 5},
        ]
    )
    return convs


def test_a_turn_boundary_is_learned_outside_the_replies(model_dir: Path) -> None:
    enc = ChatEncoder(AutoTokenizer.from_pretrained(model_dir))
    assert enc.boundary in ("<|im_start|>", "<|assistant|>", "<|user|>")
    assert ChatEncoder(AutoTokenizer.from_pretrained(model_dir), fast=False).boundary is None


def test_limited_encoding_equals_whole_encoding_truncated(model_dir: Path) -> None:
    enc = ChatEncoder(AutoTokenizer.from_pretrained(model_dir))
    convs = conversations(enc.boundary)
    whole = enc.encode(convs)
    assert enc.prefix_count == 0
    cut = enc.encode(convs, limit=LIMIT)
    assert enc.prefix_count > 0  # the prefix path ran
    for w, c in zip(whole, cut, strict=True):
        assert c.input_ids[:LIMIT] == w.input_ids[:LIMIT]
        assert c.labels[:LIMIT] == w.labels[:LIMIT]
        assert (len(c.input_ids) > LIMIT) == (len(w.input_ids) > LIMIT)
        # a prefix is exactly the first tokens of the whole text, not only up to the limit
        assert c.input_ids == w.input_ids[: len(c.input_ids)]
        assert c.labels == w.labels[: len(c.labels)]
        if not any(a < LIMIT for a, _ in c.label_ranges):  # a dropped row: exact, whole
            assert c == w
        assert c.first_label == w.first_label
    text = enc.render(convs[4])
    assert len(cut[4].input_ids) < len(whole[4].input_ids) and len(text) > LIMIT * 5


def test_preprocess_output_is_the_same_with_and_without_the_cut(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boundary = ChatEncoder(AutoTokenizer.from_pretrained(model_dir)).boundary
    data = tmp_path / "train.jsonl"
    rows = [c for _ in range(3) for c in conversations(boundary)]
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))

    def run(out: str) -> tuple[dict[str, Any], Path, list[str]]:
        logs: list[str] = []
        cfg = PreprocessConfig(
            train_file=data, model_dir=model_dir, max_seq_length=LIMIT, output_dir=tmp_path / out
        )
        report = run_preprocess(cfg, logs.append).to_dict()
        report.pop("seconds")
        return report, cfg.output_dir, logs

    cut_report, cut_dir, cut_logs = run("cut")
    monkeypatch.setattr(preprocess.ChatEncoder, "_learn_boundary", lambda self: None)
    whole_report, whole_dir, whole_logs = run("whole")
    assert any("tokenized up to the first" in line for line in cut_logs)
    assert not any("tokenized up to the first" in line for line in whole_logs)
    assert cut_report == whole_report
    assert cut_report["dropped"]["truncated_no_assistant"]["count"] == 6
    for split in ("train", "validation", "test"):
        assert pq.read_table(cut_dir / f"{split}.parquet").equals(
            pq.read_table(whole_dir / f"{split}.parquet")
        )


def test_overlapping_added_tokens() -> None:
    assert not _overlaps("<|im_end|>", "<|im_start|>")
    assert _overlaps("<|im", "<|im_start|>")  # a prefix of it
    assert _overlaps("<|im_start|>assistant", "<|im_start|>")  # it is a prefix of the other
    assert _overlaps("x<|im_start|>", "<|im_start|>")  # holds it
    assert _overlaps("ab<|", "<|im_start|>")  # ends inside it
    assert not _overlaps("<|end|>", "<|user|>")


class _Enc:
    """The parts of a `tokenizers.Encoding` that labelling reads: one token per character."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(100, 100 + n))
        self.offsets = [(i, i + 1) for i in range(n)]

    def char_to_token(self, c: int) -> int | None:
        return c if c < len(self.ids) else None

    def token_to_chars(self, t: int) -> tuple[int, int]:
        return self.offsets[t]


def test_a_prefix_stands_for_the_text_only_when_it_decides_the_first_tokens() -> None:
    text = "x" * 200
    # more than `limit` tokens, a label among them: the prefix does
    done = _label_prefix(_Enc(11), text, 11, [(2, 5), (50, 60)], limit=10)
    assert done is not None and done.label_ranges == [(2, 5)]
    # exactly `limit` tokens: whether the text is longer than the limit is not known
    assert _label_prefix(_Enc(10), text, 10, [(2, 5)], limit=10) is None
    # a labelled span across the cut
    assert _label_prefix(_Enc(20), text, 20, [(2, 5), (15, 30)], limit=10) is None
    # labels, but none among the first `limit` tokens: a dropped row, reported from the text
    assert _label_prefix(_Enc(20), text, 20, [(12, 15)], limit=10) is None
    assert _label_prefix(_Enc(20), text, 20, [], limit=10) is None


def test_direct_rendering_equals_transformers_rendering(model_dir: Path) -> None:
    enc = ChatEncoder(AutoTokenizer.from_pretrained(model_dir))
    assert enc._direct is not None
    system = {"role": "system", "content": "Be brief. {{ not jinja }} <b>ok</b>"}
    convs = [*conversations(enc.boundary), [system, *long_conv(3, 2)]]
    assert [enc._direct(c) for c in convs] == [enc.render(c) for c in convs]
    # a batch holding a message that is not plain strings goes through transformers
    odd = [{"role": "user", "content": "hi", "name": "x"}, {"role": "assistant", "content": "yo"}]
    assert enc._render_all([*convs[:2], odd], None) == [enc.render(c) for c in (*convs[:2], odd)]
