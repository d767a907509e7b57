from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from chattune.errors import DatasetInvalid, InvalidParameter
from chattune.train.preprocess import (
    IGNORE_INDEX,
    ChatEncoder,
    ChatTemplateFailed,
    NoAssistantTokens,
    PreprocessConfig,
    PreprocessReport,
    TooFewTrainingRows,
    preprocess_cache_key,
    run_preprocess,
)

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
MULTI_TURN = [
    SYSTEM,
    {"role": "user", "content": "Hello, how are you doing today?"},
    {"role": "assistant", "content": "I am fine, thank you. What about you?"},
    {"role": "user", "content": "Can you tell me a joke about computers?"},
    {"role": "assistant", "content": "Why did the programmer quit his job?\nArrays."},
]


def conv(i: int, turns: int = 1, system: bool = False) -> list[dict[str, str]]:
    msgs = [SYSTEM] if system else []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}.{t}: what is {i} + {t}?"})
        msgs.append({"role": "assistant", "content": f"The answer is {i + t}."})
    return msgs


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows are dicts (written as JSON), lists (a row's messages) or raw strings (as is)."""
    lines = []
    for r in rows:
        if isinstance(r, str):
            lines.append(r)
        elif isinstance(r, list):
            lines.append(json.dumps({"messages": r}))
        else:
            lines.append(json.dumps(r))
    path.write_text("\n".join(lines) + "\n")
    return path


def label_runs(tok: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """The labelled token runs, decoded."""
    runs, cur = [], []
    for i, y in zip(input_ids, labels, strict=True):
        if y != IGNORE_INDEX:
            assert y == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def read_split(out: Path, split: str) -> list[dict[str, Any]]:
    return pq.read_table(out / f"{split}.parquet").to_pylist()


class Logs(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


@pytest.fixture(params=["llama", "phi3"])
def model(request: pytest.FixtureRequest) -> tuple[Path, str]:
    """(model folder, end-of-turn token) for the ChatML (tiny llama) and Phi-3 templates."""
    if request.param == "llama":
        return request.getfixturevalue("tiny_llama_dir"), "<|im_end|>"
    return request.getfixturevalue("tiny_phi3_dir"), "<|end|>"


def make_cfg(tmp_path: Path, model_dir: Path, **kw: Any) -> PreprocessConfig:
    kw.setdefault("output_dir", tmp_path / "out")
    return PreprocessConfig(model_dir=model_dir, **kw)


# -- labels ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False], ids=["pattern", "exact"])
def test_labels_are_assistant_contents_and_end_token(model: tuple[Path, str], fast: bool) -> None:
    model_dir, end = model
    tok = AutoTokenizer.from_pretrained(model_dir)
    encoder = ChatEncoder(tok, fast=fast)
    assert (encoder.pattern is not None) == fast
    (enc,) = encoder.encode([MULTI_TURN])

    assert enc.input_ids == tok.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=False)
    runs = label_runs(tok, enc.input_ids, enc.labels)
    assert runs == [MULTI_TURN[2]["content"] + end, MULTI_TURN[4]["content"] + end]
    assert encoder.exact_count == (0 if fast else 1)


def test_phi3_eos_after_last_turn_is_not_labelled(tiny_phi3_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_phi3_dir)
    (enc,) = ChatEncoder(tok).encode([conv(1)])
    assert enc.input_ids[-1] == tok.eos_token_id  # the template appends eos after the last turn
    assert enc.labels[-1] == IGNORE_INDEX
    assert tok.decode(enc.input_ids[enc.label_ranges[-1][1] - 1]) == "<|end|>"


def test_end_tokens_that_swallow_the_newline_stay_labelled(tiny_phi3_dir: Path) -> None:
    """Phi-3's real tokenizer adds `<|end|>` with rstrip=True: the token covers "<|end|>\n"."""
    from tokenizers import AddedToken

    tok = AutoTokenizer.from_pretrained(tiny_phi3_dir)
    specials = ["<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, rstrip=True, normalized=False) for t in specials
            ]
        }
    )
    assert tok.tokenize("<|end|>\n") == ["<|end|>\n"]
    end_id = tok.convert_tokens_to_ids("<|end|>")
    for fast in (True, False):
        (enc,) = ChatEncoder(tok, fast=fast).encode([MULTI_TURN])
        runs = label_runs(tok, enc.input_ids, enc.labels)
        assert runs == [MULTI_TURN[2]["content"] + "<|end|>", MULTI_TURN[4]["content"] + "<|end|>"]
        assert [enc.input_ids[b - 1] for _, b in enc.label_ranges] == [end_id, end_id]


TRICKY = [
    conv(1),
    conv(2, turns=3, system=True),
    # a reply equal to text of the template, contents with outer whitespace
    [{"role": "user", "content": "say assistant"}, {"role": "assistant", "content": "assistant"}],
    [{"role": "user", "content": " padded \n"}, {"role": "assistant", "content": "  spaced  \n"}],
    # a conversation ending with the user: the last message is not a reply
    [*conv(3), {"role": "user", "content": "And then?"}],
]


def test_pattern_and_exact_labels_agree(model: tuple[Path, str]) -> None:
    tok = AutoTokenizer.from_pretrained(model[0])
    fast, exact = ChatEncoder(tok), ChatEncoder(tok, fast=False)
    assert [e.labels for e in fast.encode(TRICKY)] == [e.labels for e in exact.encode(TRICKY)]
    assert [e.input_ids for e in fast.encode(TRICKY)] == [e.input_ids for e in exact.encode(TRICKY)]


def test_char_lookups_match_token_offsets(model: tuple[Path, str]) -> None:
    """The fast span->token mapping equals the one from every token's offsets, for any span."""
    from chattune.train.chat_encoder import _char_range, _Ends, _offsets_range

    tok = AutoTokenizer.from_pretrained(model[0])
    text = tok.apply_chat_template(MULTI_TURN, tokenize=False)
    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
    ends = _Ends(enc.offsets)
    for start in range(0, len(text), 3):
        for end in range(start, min(len(text), start + 120) + 1):
            a, b = _offsets_range(ends, text, start, end)
            fast = _char_range(enc, text, start, end)
            assert fast is not None
            assert fast == (a, b) or (fast[0] >= fast[1] and a >= b), (start, end)


def test_trimming_template_labels_stripped_contents(tiny_llama_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim "
        "+ '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "  Hi  "},
        {"role": "assistant", "content": " Hello there. "},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you\n"},
    ]
    encoder = ChatEncoder(tok)
    (enc,) = encoder.encode([messages])
    assert label_runs(tok, enc.input_ids, enc.labels) == [
        "Hello there.<|im_end|>",
        "See you<|im_end|>",
    ]


def test_tokenizer_without_chat_template_fails(tiny_llama_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    with pytest.raises(ChatTemplateFailed, match="no chat template") as err:
        ChatEncoder(tok)
    assert "--chat-template" in str(err.value)


# -- splits ---------------------------------------------------------------------------------------
def test_train_only_splits_80_10_10_in_order(tmp_path: Path, tiny_llama_dir: Path) -> None:
    rows: list[Any] = [conv(i) for i in range(50)]
    rows[3:3] = ["{not json"]  # line 4 is dropped: valid rows still number 50
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    logs = Logs()
    report = run_preprocess(make_cfg(tmp_path, tiny_llama_dir, train_file=train), logs)

    out = tmp_path / "out"
    lines = {
        s: [r["source_line"] for r in read_split(out, s)] for s in ("train", "validation", "test")
    }
    assert lines["train"] == [1, 2, 3, *range(5, 42)]  # 40 rows
    assert lines["validation"] == list(range(42, 47))  # 5 rows
    assert lines["test"] == list(range(47, 52))  # 5 rows
    assert report.split_mode == "train"
    assert {s: st.rows_out for s, st in report.splits.items()} == {
        "train": 40,
        "validation": 5,
        "test": 5,
    }
    test_messages = [json.loads(x) for x in (out / "test_messages.jsonl").read_text().splitlines()]
    assert [m["messages"] for m in test_messages] == [conv(i) for i in range(45, 50)]
    assert [m["source_line"] for m in test_messages] == list(range(47, 52))


def test_train_and_test_take_validation_from_the_end_of_train(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(50)])
    test = write_jsonl(tmp_path / "test.jsonl", [conv(100 + i) for i in range(7)])
    report = run_preprocess(
        make_cfg(tmp_path, tiny_llama_dir, train_file=train, test_file=test), Logs()
    )
    out = tmp_path / "out"
    assert [r["source_line"] for r in read_split(out, "train")] == list(range(1, 41))
    assert [r["source_line"] for r in read_split(out, "validation")] == list(range(41, 51))
    assert [r["source_line"] for r in read_split(out, "test")] == list(range(1, 8))
    assert report.split_mode == "train+test"
    assert report.splits["validation"].rows_out == 10


def test_train_and_validation_use_validation_as_test(tmp_path: Path, tiny_llama_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(30)])
    val = write_jsonl(tmp_path / "val.jsonl", [conv(100 + i) for i in range(6)])
    logs = Logs()
    report = run_preprocess(
        make_cfg(tmp_path, tiny_llama_dir, train_file=train, validation_file=val), logs
    )
    out = tmp_path / "out"
    assert len(read_split(out, "train")) == 30
    assert read_split(out, "test") == read_split(out, "validation")
    assert len(read_split(out, "test")) == 6
    assert "the test split is the validation set" in logs.text
    assert report.splits["test"].rows_out == 6
    assert len((out / "test_messages.jsonl").read_text().splitlines()) == 6


def test_three_files_are_used_as_given(tmp_path: Path, tiny_llama_dir: Path) -> None:
    files = {
        name: write_jsonl(tmp_path / f"{name}.jsonl", [conv(i) for i in range(n)])
        for name, n in (("train", 20), ("validation", 4), ("test", 3))
    }
    report = run_preprocess(
        make_cfg(
            tmp_path,
            tiny_llama_dir,
            train_file=files["train"],
            validation_file=files["validation"],
            test_file=files["test"],
        ),
        Logs(),
    )
    assert {s: st.rows_out for s, st in report.splits.items()} == {
        "train": 20,
        "validation": 4,
        "test": 3,
    }


# -- dropped rows ---------------------------------------------------------------------------------
def test_dropped_rows_are_reported_by_reason_with_lines(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    u, a = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    bad = [
        '{"messages": [',  # line 13: invalid JSON
        {"prompt": "no messages here"},  # 14
        {"messages": []},  # 15
        [u],  # 16: one message
        [u, {"role": "bot", "content": "x"}],  # 17
        [u, a, a],  # 18: not alternating
        [u, a, SYSTEM, u, a],  # 19: system not first
    ]
    rows: list[Any] = [conv(i) for i in range(12)] + bad + [[u]] * 6  # lines 20-25: one message
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [conv(1)])
    logs = Logs()
    report = run_preprocess(
        make_cfg(tmp_path, tiny_llama_dir, train_file=train, test_file=test), logs
    )

    d = report.dropped
    expected = {
        "invalid_json": [13],
        "missing_messages": [14],
        "empty_messages": [15],
        "too_few_messages": [16, 20, 21, 22, 23],  # 7 rows, the first 5 listed
        "bad_role": [17],
        "not_alternating": [18],
        "system_not_first": [19],
    }
    assert {k: [e.line for e in v.examples] for k, v in d.items()} == expected
    assert d["too_few_messages"].count == 7
    assert d["too_few_messages"].reason == "one message or fewer"
    assert all(e.file == "train.jsonl" for v in d.values() for e in v.examples)
    assert "messages[1].role is 'bot'" in d["bad_role"].examples[0].detail
    metrics = report.metrics()
    assert metrics["dropped_too_few_messages"] == 7
    assert metrics["dropped_rows"] == 13
    assert "dropped 7 rows: one message or fewer; first: train.jsonl:16" in logs.text
    assert "train.jsonl:19 (messages[2] is a system message)" in logs.text
    assert report.rows_read == {"train_file": 25, "test_file": 1}


# -- failures -------------------------------------------------------------------------------------
def test_fewer_than_10_training_rows_fails(tmp_path: Path, tiny_llama_dir: Path) -> None:
    rows: list[Any] = [conv(i) for i in range(9)] + [[conv(0)[0]], "oops"]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", [conv(1)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")  # a stale report must not survive a failed run
    with pytest.raises(TooFewTrainingRows) as err:
        run_preprocess(make_cfg(tmp_path, tiny_llama_dir, train_file=train, validation_file=val))
    msg = str(err.value)
    assert isinstance(err.value, DatasetInvalid)
    assert "Only 9 training rows remain" in msg
    assert "2 dropped (1 one message or fewer, 1 invalid JSON)" in msg
    assert f"chattune data validate {train}" in err.value.fix
    assert "train_file" in err.value.fix
    assert list(out.iterdir()) == []


def test_fewer_than_10_rows_after_the_split_fails(tmp_path: Path, tiny_llama_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(12)])  # 9 train rows
    with pytest.raises(TooFewTrainingRows, match="Only 9 training rows remain after the 80/10/10"):
        run_preprocess(make_cfg(tmp_path, tiny_llama_dir, train_file=train), Logs())


def boom_model(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    """A copy of the tiny llama whose template raises on a message 'boom' (see `BOOM`)."""
    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    (model_dir / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['content'] == 'boom' %}"
        "{{ raise_exception('no boom allowed') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    )
    return model_dir


BOOM = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "boom"}]


def test_chat_template_error_names_the_row(tmp_path: Path, tiny_llama_dir: Path) -> None:
    model_dir = boom_model(tmp_path, tiny_llama_dir)
    rows: list[Any] = [conv(i) for i in range(20)]
    rows[6] = BOOM
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ChatTemplateFailed) as err:
        run_preprocess(make_cfg(tmp_path, model_dir, train_file=train), Logs())
    assert f"{train}, line 7" in err.value.message
    assert "TemplateError: no boom allowed" in err.value.message
    assert "--chat-template" in err.value.fix
    assert not (tmp_path / "out" / "report.json").exists()
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_template_that_always_raises_fails(tmp_path: Path, tiny_llama_dir: Path) -> None:
    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    (model_dir / "chat_template.jinja").write_text("{{ raise_exception('x') }}")
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(20)])
    with pytest.raises(ChatTemplateFailed, match=r"line 1: TemplateError: x"):
        run_preprocess(make_cfg(tmp_path, model_dir, train_file=train), Logs())


def test_nothing_left_after_truncation_fails_with_the_length_needed(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    rows = [conv(i, system=i % 2 == 0) for i in range(20)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    needed = min(e.first_label + 1 for e in ChatEncoder(tok).encode(rows[:16]))  # train rows
    with pytest.raises(NoAssistantTokens) as err:
        run_preprocess(make_cfg(tmp_path, tiny_llama_dir, train_file=train, max_seq_length=4))
    assert "No training row keeps an assistant token within max_seq_length=4" in str(err.value)
    assert f"raise `max_seq_length` to at least {needed} " in err.value.fix
    assert "shorten the system prompts" in err.value.fix


def test_missing_inputs_are_all_reported(tmp_path: Path) -> None:
    cfg = PreprocessConfig(
        train_file=tmp_path / "nope.jsonl",
        test_file=tmp_path / "data.txt",
        model_dir=tmp_path / "no-model",
        output_dir=tmp_path / "out",
    )
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(InvalidParameter) as err:
        run_preprocess(cfg, Logs())
    msg = str(err.value)
    assert "`train_file`" in msg and "`test_file`" in msg and "`model_dir`" in msg


def test_max_seq_length_must_be_minus_one_or_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be -1"):
        PreprocessConfig(
            train_file="t.jsonl", model_dir=tmp_path, output_dir=tmp_path, max_seq_length=0
        )


# -- truncation -----------------------------------------------------------------------------------
def test_truncation_keeps_the_start_and_respects_max_seq_length(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    long_user = {"role": "user", "content": "Tell me a long story. " * 20}
    rows: list[Any] = [conv(i, turns=3) for i in range(20)]
    rows[5] = [long_user, {"role": "assistant", "content": "No."}]  # line 6: reply cut off
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", [conv(1)])
    max_len = 40
    report = run_preprocess(
        make_cfg(
            tmp_path, tiny_llama_dir, train_file=train, test_file=test, max_seq_length=max_len
        ),
        Logs(),
    )
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    full = {i + 1: e for i, e in enumerate(ChatEncoder(tok).encode(rows))}
    written = read_split(tmp_path / "out", "train") + read_split(tmp_path / "out", "validation")
    assert 6 not in [r["source_line"] for r in written]
    assert len(written) == 19
    for r in written:
        enc = full[r["source_line"]]
        assert r["num_tokens"] == len(r["input_ids"]) <= max_len
        assert r["input_ids"] == enc.input_ids[:max_len]
        assert r["labels"] == enc.labels[:max_len]
        assert r["num_label_tokens"] == sum(y != IGNORE_INDEX for y in r["labels"]) > 0
    truncated = sum(len(full[r["source_line"]].input_ids) > max_len for r in written)
    assert truncated > 0
    assert report.splits["train"].truncated + report.splits["validation"].truncated == truncated
    assert report.truncated == truncated + report.splits["test"].truncated
    assert report.max_seq_length == max_len
    dropped = report.dropped["truncated_no_assistant"]
    assert (dropped.count, dropped.examples[0].line) == (1, 6)


def test_minus_one_uses_the_model_context(tmp_path: Path, tiny_llama_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(20)])
    report = run_preprocess(make_cfg(tmp_path, tiny_llama_dir, train_file=train), Logs())
    assert report.max_seq_length == 256  # max_position_embeddings of the tiny llama


# -- outputs --------------------------------------------------------------------------------------
def test_outputs_and_report_are_complete(tmp_path: Path, model: tuple[Path, str]) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i, turns=2) for i in range(30)])
    cfg = make_cfg(tmp_path, model[0], train_file=train)
    report = run_preprocess(cfg, Logs())
    out = tmp_path / "out"

    assert sorted(p.name for p in out.iterdir()) == [
        "report.json",
        "test.parquet",
        "test_messages.jsonl",
        "train.parquet",
        "validation.parquet",
    ]
    schema = pq.read_schema(out / "train.parquet")
    assert schema.field("input_ids").type == pa.list_(pa.int32())
    assert schema.field("labels").type == pa.list_(pa.int32())
    for name in ("num_tokens", "num_label_tokens", "source_line"):
        assert name in schema.names

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert PreprocessReport.load(out) == report
    assert report.cache_key == preprocess_cache_key(cfg)
    for split in ("train", "validation", "test"):
        rows = read_split(out, split)
        st = on_disk["splits"][split]
        assert st["rows_in"] == st["rows_out"] == len(rows)
        assert st["tokens"] == sum(len(r["input_ids"]) for r in rows)
        assert st["label_tokens"] == sum(sum(y != -100 for y in r["labels"]) for r in rows)
    assert on_disk["max_seq_length"] == 256
    assert on_disk["truncated"] == 0
    assert on_disk["dropped"] == {}

    metrics = report.metrics()
    assert metrics["train_rows"] == 24
    assert metrics["validation_rows"] == metrics["test_rows"] == 3
    assert metrics["train_label_tokens"] == on_disk["splits"]["train"]["label_tokens"] > 0
    assert metrics["dropped_rows"] == 0


# -- cache key ------------------------------------------------------------------------------------
def test_cache_key_follows_data_tokenizer_and_parameters(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(20)])
    base = PreprocessConfig(
        train_file=train, model_dir=model_dir, output_dir=tmp_path / "out", max_seq_length=-1
    )
    key = preprocess_cache_key(base)
    assert len(key) == 64

    def key_with(**kw: Any) -> str:
        return preprocess_cache_key(base.model_copy(update=kw))

    # the same inputs elsewhere, another output folder, other weights: same key
    copy = shutil.copy(train, tmp_path / "copy.jsonl")
    assert key_with(train_file=Path(copy)) == key
    assert key_with(output_dir=tmp_path / "elsewhere") == key
    assert key_with(max_seq_length=256) == key  # -1 resolves to the model's 256
    (model_dir / "model.safetensors").write_bytes(b"other weights")
    assert preprocess_cache_key(base) == key

    # data, parameters, files given
    changed = write_jsonl(tmp_path / "changed.jsonl", [conv(i) for i in range(21)])
    assert key_with(train_file=changed) != key
    assert key_with(max_seq_length=128) != key
    assert key_with(seed=7) != key
    assert key_with(test_file=Path(copy)) != key

    # tokenizer and chat template
    template = model_dir / "chat_template.jinja"
    template.write_text(template.read_text() + " ")
    assert preprocess_cache_key(base) != key
