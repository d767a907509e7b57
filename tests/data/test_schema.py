from __future__ import annotations

from typing import Any

import pytest

from chattune.data import schema
from chattune.data.schema import check_messages


def m(role: Any, content: Any = "text") -> dict[str, Any]:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    "messages",
    [
        [m("user"), m("assistant")],
        [m("system"), m("user"), m("assistant")],
        [m("user"), m("assistant"), m("user")],  # ends with the user: still trainable
        [m("user"), m("assistant"), m("user"), m("assistant")],
    ],
)
def test_valid_conversations_pass(messages: list[Any]) -> None:
    assert check_messages(messages) is None


@pytest.mark.parametrize(
    ("messages", "reason", "detail"),
    [
        (None, schema.MISSING_MESSAGES, "missing"),
        ([], schema.EMPTY_MESSAGES, "[]"),
        ("hello", schema.MESSAGES_NOT_LIST, "str"),
        ([m("user"), "hi"], schema.MESSAGE_NOT_OBJECT, "messages[1] is a str"),
        ([m("user"), m("bot")], schema.BAD_ROLE, "messages[1].role is 'bot'"),
        ([m("user"), {"content": "x"}], schema.BAD_ROLE, "messages[1].role is None"),
        ([m("user", ""), m("assistant")], schema.BAD_CONTENT, "messages[0].content"),
        ([m("user", "  \n"), m("assistant")], schema.BAD_CONTENT, "messages[0].content"),
        ([m("user"), m("assistant", 5)], schema.BAD_CONTENT, "messages[1].content is 5"),
        ([m("user")], schema.TOO_FEW_MESSAGES, "only 1"),
        ([m("user"), m("system"), m("assistant")], schema.SYSTEM_NOT_FIRST, "messages[1]"),
        ([m("assistant"), m("user")], schema.FIRST_NOT_USER, "messages[0].role is 'assistant'"),
        ([m("system"), m("assistant"), m("user")], schema.FIRST_NOT_USER, "messages[1]"),
        ([m("user"), m("user"), m("assistant")], schema.NOT_ALTERNATING, "messages[1]"),
        ([m("user"), m("assistant"), m("assistant")], schema.NOT_ALTERNATING, "messages[2]"),
        ([m("system"), m("user")], schema.NO_ASSISTANT, "system, user"),
    ],
)
def test_each_broken_rule_has_its_reason(messages: Any, reason: str, detail: str) -> None:
    problem = check_messages(messages)
    assert problem is not None
    assert problem.reason == reason
    assert detail in problem.detail
    assert str(problem) == f"{reason}: {problem.detail}"


def test_reasons_are_distinct() -> None:
    assert len(set(schema.REASONS)) == len(schema.REASONS)
