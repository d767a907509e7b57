from __future__ import annotations

import json
from pathlib import Path

import pytest

from chattune.data import schema
from chattune.data.validate import iter_checked, iter_conversations, unusable, validate_file
from chattune.errors import DatasetInvalid
from tests.data.helpers import chat, table_rows, write_jsonl

U, A, S = "user", "assistant", "system"


def msgs(*pairs: tuple[object, object]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


# line -> (row, expected reason); line 16 is blank and not a row
BAD_ROWS: dict[int, tuple[object, str]] = {
    2: ('{"messages": [', schema.INVALID_JSON),
    3: ("[1, 2]", schema.NOT_OBJECT),
    4: ({"text": "no conversation here"}, schema.MISSING_MESSAGES),
    5: ({"messages": []}, schema.EMPTY_MESSAGES),
    6: ({"messages": {"role": "user"}}, schema.MESSAGES_NOT_LIST),
    7: ({"messages": ["hi", {"role": "assistant", "content": "yo"}]}, schema.MESSAGE_NOT_OBJECT),
    8: (msgs((U, "hi"), ("bot", "yo")), schema.BAD_ROLE),
    9: (msgs((U, "hi"), (A, "")), schema.BAD_CONTENT),
    10: (msgs((U, "hi"), (S, "be nice"), (A, "yo")), schema.SYSTEM_NOT_FIRST),
    11: (msgs((A, "hi"), (U, "yo")), schema.FIRST_NOT_USER),
    12: (msgs((U, "hi"), (U, "again"), (A, "yo")), schema.NOT_ALTERNATING),
    13: (msgs((S, "be nice"), (U, "hi")), schema.NO_ASSISTANT),
    14: (msgs((U, "hi")), schema.TOO_FEW_MESSAGES),
    15: ({"conversations": []}, schema.EMPTY_MESSAGES),
}


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    lines: list[object] = [chat("hello", "hi")]
    lines += [BAD_ROWS[n][0] for n in range(2, 16)]
    lines += [
        "",
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
    ]
    return write_jsonl(tmp_path / "bad.jsonl", lines)


def test_every_reason_is_covered() -> None:
    assert {reason for _, reason in BAD_ROWS.values()} == set(schema.REASONS)


def test_validate_file_names_each_bad_row_and_reason(bad_file: Path) -> None:
    report = validate_file(bad_file)
    assert (report.total, report.valid, report.invalid) == (16, 2, 14)
    assert not report.ok
    assert {b.line: b.problem.reason for b in report.bad if b.problem} == {
        line: reason for line, (_, reason) in BAD_ROWS.items()
    }
    assert report.reasons[schema.EMPTY_MESSAGES] == 2
    assert report.formats == {"openai": 11, "sharegpt": 2}
    sharegpt = next(b for b in report.bad if b.line == 15)
    assert sharegpt.format == "sharegpt"
    assert "after converting sharegpt format" in (
        sharegpt.problem.detail if sharegpt.problem else ""
    )


def test_cli_validate_lists_bad_rows_and_exits_1(cli, bad_file: Path) -> None:
    res = cli("data", "validate", bad_file)
    assert res.code == 1
    rows = table_rows(res.out)
    listed = {int(r[0]): r for r in rows if r[0].isdigit()}
    for line, (_, reason) in BAD_ROWS.items():
        assert listed[line][2] == reason, line
    assert listed[2][1] == "-" and listed[15][1] == "sharegpt" and listed[6][1] == "openai"
    assert "messages[1].role is 'bot'" in listed[8][3]
    assert "Expecting" in listed[2][3]
    counts = {r[0]: r[1] for r in rows if not r[0].isdigit()}
    assert counts[schema.EMPTY_MESSAGES] == "2"
    assert counts[schema.BAD_ROLE] == "1"
    assert sum(int(c) for c in counts.values()) == 14
    assert f"error: 14 of 16 rows of {bad_file} break the conversation schema" in res.flat_err
    assert f"{bad_file}: 16 rows, 2 valid, 14 invalid (formats: openai 11, sharegpt 2)" in (
        res.flat_out
    )


def test_cli_validate_caps_the_listing_but_counts_all(cli, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "many.jsonl", [msgs((U, "only me"))] * 60 + [chat("a", "b")])
    res = cli("data", "validate", f, "--max-listed", "50")
    assert res.code == 1
    listed = [r for r in table_rows(res.out) if r[0].isdigit()]
    assert [int(r[0]) for r in listed] == list(range(1, 51))
    assert "... and 10 more bad rows" in res.out
    assert [schema.TOO_FEW_MESSAGES, "60"] in table_rows(res.out)
    assert "61 rows, 1 valid, 60 invalid" in res.flat_out


def test_cli_validate_json(cli, bad_file: Path) -> None:
    res = cli("data", "validate", bad_file, "--json")
    assert res.code == 1
    data = json.loads(res.out)
    assert data["invalid"] == 14
    assert data["bad_rows"][0] == {
        "line": 2,
        "format": None,
        "reason": schema.INVALID_JSON,
        "detail": data["bad_rows"][0]["detail"],
    }


def test_cli_validate_good_file_exits_0(cli, tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "good.jsonl", [chat("a", "b"), chat("c", "d", "e", "f", system="s")])
    res = cli("data", "validate", f)
    assert res.code == 0, res.out
    assert "2 rows, 2 valid, 0 invalid" in res.flat_out
    assert "all rows valid" in res.out


def test_cli_validate_csv_and_parquet_formats(cli, tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text('instruction,input,output\n"Say hi",,"Hi"\n"Say nothing",,""\n', encoding="utf-8")
    res = cli("data", "validate", f)
    assert res.code == 1
    [bad] = [r for r in table_rows(res.out) if r[0].isdigit()]
    assert bad[:3] == ["3", "alpaca", schema.BAD_CONTENT]
    assert "messages[1].content" in bad[3]


def test_cli_validate_missing_file(cli, tmp_path: Path) -> None:
    res = cli("data", "validate", tmp_path / "nope.jsonl")
    assert res.code == 2
    assert "nope.jsonl does not exist" in res.flat_err


def test_iter_conversations_raises_with_the_line(bad_file: Path) -> None:
    rows = iter_conversations(bad_file)
    assert next(rows)["prompt"] == "hello"
    with pytest.raises(DatasetInvalid) as info:
        next(rows)
    assert info.value.message.startswith(f"{bad_file}, line 2: invalid JSON")
    assert "chattune data validate" in (info.value.fix or "")


def test_iter_conversations_can_skip_bad_rows(bad_file: Path) -> None:
    rows = list(iter_conversations(bad_file, skip_invalid=True))
    assert [r["messages"][0]["content"] for r in rows] == ["hello", "a"]
    assert sum(1 for c in iter_checked(bad_file) if not c.ok) == 14


def test_an_empty_file_is_unusable_and_validate_exits_1(cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")  # blank lines are not rows
    report = validate_file(empty)
    assert report.total == 0 and not report.ok
    nothing = unusable(report)
    assert nothing is not None and nothing.problem == "is empty: it holds no rows"
    res = cli("data", "validate", empty)
    assert res.code == 1
    assert "all rows valid" not in res.out
    assert f"{empty} is empty: it holds no rows." in res.flat_err
    assert 'one a line: {"messages": [{"role": "user"' in res.flat_err


def test_a_file_with_no_usable_conversation_says_so_by_line(cli, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\x01binary\nnot json at all\n{oops\nlast\n")
    res = cli("data", "validate", garbage)
    assert res.code == 1
    assert f"{garbage} is not JSON lines: none of its 4 rows can be read (line 1: invalid" in (
        res.flat_err
    )
    assert "; and 1 more)" in res.flat_err and "write garbage.jsonl as JSON lines" in res.flat_err
    lonely = write_jsonl(tmp_path / "lonely.jsonl", [msgs((U, "hi"))] * 2)
    nothing = unusable(validate_file(lonely))
    assert nothing is not None
    assert nothing.problem == (
        "has no usable conversation: all 2 rows break the conversation schema "
        "(line 1: one message or fewer: only 1 message; line 2: one message or fewer: "
        "only 1 message)"
    )
    assert f"chattune data validate {lonely}" in nothing.fix


def test_a_file_with_one_good_row_is_usable(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "mixed.jsonl", ["{oops", chat("a", "b")])
    report = validate_file(f)
    assert unusable(report) is None and not report.ok
