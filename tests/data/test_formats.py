from __future__ import annotations

import hashlib
import json

import pytest

from chattune.data.formats import (
    ConversionError,
    detect_format,
    prompt_id,
    to_messages,
    to_ultrachat,
)
from chattune.data.schema import MESSAGES_NOT_LIST, MISSING_MESSAGES


def test_prompt_id_is_sha256_of_the_prompt() -> None:
    assert prompt_id("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


def test_openai_rows_keep_role_and_content_only() -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "x"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "weight": 1},
        ]
    }
    fmt, out = to_ultrachat(row)
    assert fmt == "openai"
    assert out == {
        "prompt": "Hi",
        "prompt_id": prompt_id("Hi"),
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
    }


def test_ultrachat_rows_keep_their_prompt_and_id() -> None:
    row = {
        "prompt": "Q",
        "prompt_id": "abc",
        "messages": [{"content": "Q", "role": "user"}, {"content": "A", "role": "assistant"}],
    }
    _, out = to_ultrachat(row)
    assert out["prompt"] == "Q"
    assert out["prompt_id"] == "abc"
    assert list(out) == ["prompt", "prompt_id", "messages"]


def test_sharegpt_maps_speakers_to_roles() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "You are kind."},
            {"from": "human", "value": "What is 2+2?"},
            {"from": "gpt", "value": "4."},
            {"from": "Human", "value": "And 3+3?"},
            {"from": "chatgpt", "value": "6."},
        ]
    }
    assert detect_format(row) == "sharegpt"
    fmt, out = to_ultrachat(row)
    assert fmt == "sharegpt"
    assert out["messages"] == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6."},
    ]
    assert out["prompt"] == "What is 2+2?"
    assert out["prompt_id"] == prompt_id("What is 2+2?")


def test_sharegpt_unknown_speaker_is_kept_for_validation_to_report() -> None:
    msgs = to_messages({"conversations": [{"from": "narrator", "value": "x"}]})
    assert msgs == [{"role": "narrator", "content": "x"}]


def test_sharegpt_top_level_system_becomes_first_message() -> None:
    row = {"system": "S", "conversations": [{"from": "human", "value": "u"}]}
    assert to_messages(row)[0] == {"role": "system", "content": "S"}


@pytest.mark.parametrize(
    ("row", "user"),
    [
        ({"instruction": "Translate.", "input": "Hallo", "output": "Hello"}, "Translate.\n\nHallo"),
        ({"instruction": "Say hi.", "input": "", "output": "Hello"}, "Say hi."),
        ({"instruction": "Say hi.", "output": "Hello"}, "Say hi."),
        ({"instruction": "Say hi.", "input": None, "output": "Hello"}, "Say hi."),
    ],
)
def test_alpaca_joins_instruction_and_input(row: dict, user: str) -> None:
    fmt, out = to_ultrachat(row)
    assert fmt == "alpaca"
    assert out["messages"] == [
        {"role": "user", "content": user},
        {"role": "assistant", "content": "Hello"},
    ]
    assert out["prompt"] == user


def test_alpaca_system_comes_first() -> None:
    msgs = to_messages({"system": "Be formal.", "instruction": "i", "output": "o"})
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == "Be formal."


def test_messages_as_json_string_are_parsed() -> None:
    cell = json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert to_messages({"messages": cell})[1] == {"role": "assistant", "content": "b"}
    conv = json.dumps([{"from": "human", "value": "a"}])
    assert to_messages({"conversations": conv}) == [{"role": "user", "content": "a"}]


def test_unparseable_json_string_names_the_field() -> None:
    with pytest.raises(ConversionError) as info:
        to_messages({"messages": "[{oops"})
    assert info.value.problem.reason == MESSAGES_NOT_LIST
    assert "`messages` is a string that is not JSON" in info.value.problem.detail


def test_unknown_format_lists_the_fields_it_has() -> None:
    assert detect_format({"text": "x", "label": 1}) is None
    with pytest.raises(ConversionError) as info:
        to_ultrachat({"text": "x", "label": 1})
    assert info.value.problem.reason == MISSING_MESSAGES
    assert "fields: label, text" in info.value.problem.detail


def test_unknown_format_lists_at_most_eight_fields() -> None:
    with pytest.raises(ConversionError) as info:
        to_ultrachat({f"k{i:02}": i for i in range(20)})
    assert "fields: k00, k01, k02, k03, k04, k05, k06, k07, ... (12 more)" in str(info.value)


def test_null_messages_is_missing() -> None:
    with pytest.raises(ConversionError) as info:
        to_messages({"messages": None})
    assert info.value.problem.reason == MISSING_MESSAGES
