"""The conversation schema: what a valid chat row is, and why a row is not.

A row, once converted (see `chattune.data.formats`), is ultrachat-shaped:

    {"prompt": str, "prompt_id": str, "messages": [{"role": str, "content": str}, ...]}

Only `messages` matters for training. It is valid when:

- it is a non-empty list of objects, each with `role` in system/user/assistant and a
  non-empty string `content`;
- it holds at least two messages;
- a system message, if any, comes first;
- the first non-system message is from the user, and user/assistant then alternate;
- at least one message is from the assistant.

Each broken rule has a reason constant below; a row gets the first reason that applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")

# Reasons a row is rejected. Values are short, stable and printed as-is in reports.
INVALID_JSON = "invalid JSON"
NOT_OBJECT = "row is not a JSON object"
MISSING_MESSAGES = "missing messages"
EMPTY_MESSAGES = "empty messages"
MESSAGES_NOT_LIST = "messages is not a list"
MESSAGE_NOT_OBJECT = "message is not an object"
BAD_ROLE = "role not system/user/assistant"
BAD_CONTENT = "content not a non-empty string"
SYSTEM_NOT_FIRST = "system message not first"
FIRST_NOT_USER = "first non-system message not from user"
NOT_ALTERNATING = "roles do not alternate user/assistant"
NO_ASSISTANT = "no assistant message"
TOO_FEW_MESSAGES = "one message or fewer"

REASONS = (
    INVALID_JSON,
    NOT_OBJECT,
    MISSING_MESSAGES,
    EMPTY_MESSAGES,
    MESSAGES_NOT_LIST,
    MESSAGE_NOT_OBJECT,
    BAD_ROLE,
    BAD_CONTENT,
    SYSTEM_NOT_FIRST,
    FIRST_NOT_USER,
    NOT_ALTERNATING,
    NO_ASSISTANT,
    TOO_FEW_MESSAGES,
)


@dataclass(frozen=True)
class Problem:
    """Why one row breaks the schema.

    Args:
        reason: one of the reason constants of this module (used for counting).
        detail: the specifics, naming the field: `messages[2].role is 'bot'`.
    """

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def check_messages(messages: Any) -> Problem | None:
    """Check a `messages` value against the conversation schema.

    Args:
        messages: the value of a row's `messages` field (any JSON value).

    Returns:
        None when valid, else the first `Problem` found.

    Example:
        >>> check_messages([{"role": "user", "content": "hi"}]).reason
        'one message or fewer'
    """
    if messages is None:
        return Problem(MISSING_MESSAGES, "field `messages` is missing or null")
    if not isinstance(messages, list):
        return Problem(MESSAGES_NOT_LIST, f"`messages` is a {type(messages).__name__}")
    if not messages:
        return Problem(EMPTY_MESSAGES, "`messages` is []")
    for i, msg in enumerate(messages):
        problem = _check_message(i, msg)
        if problem:
            return problem
    if len(messages) <= 1:
        return Problem(TOO_FEW_MESSAGES, f"only {len(messages)} message")
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles):
        if role == "system" and i != 0:
            return Problem(SYSTEM_NOT_FIRST, f"messages[{i}] is a system message")
    chat = roles[1:] if roles[0] == "system" else roles
    offset = len(roles) - len(chat)
    if not chat or chat[0] != "user":
        got = chat[0] if chat else "nothing"
        return Problem(FIRST_NOT_USER, f"messages[{offset}].role is {got!r}, expected 'user'")
    for i, role in enumerate(chat):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            return Problem(
                NOT_ALTERNATING,
                f"messages[{i + offset}].role is {role!r} after {chat[i - 1]!r}",
            )
    if "assistant" not in chat:
        return Problem(NO_ASSISTANT, f"roles are {', '.join(roles)}")
    return None


def _check_message(i: int, msg: Any) -> Problem | None:
    if not isinstance(msg, dict):
        return Problem(MESSAGE_NOT_OBJECT, f"messages[{i}] is a {type(msg).__name__}")
    role = msg.get("role")
    if role not in ROLES:
        return Problem(BAD_ROLE, f"messages[{i}].role is {role!r}")
    content = msg.get("content")
    if not isinstance(content, str) or not content.strip():
        shown = repr(content) if not isinstance(content, str) else repr(content[:20])
        return Problem(BAD_CONTENT, f"messages[{i}].content is {shown}")
    return None
