"""Row formats of chat datasets and their conversion to the ultrachat schema.

Three formats are recognised, by their fields:

| format     | fields                                                        |
| ---------- | ------------------------------------------------------------- |
| `openai`   | `messages: [{"role", "content"}]` (ultrachat, OpenAI fine-tuning) |
| `sharegpt` | `conversations: [{"from": "human"/"gpt"/"system", "value"}]`  |
| `alpaca`   | `instruction`, `output`, optional `input` and `system`        |

Every format becomes `{"prompt", "prompt_id", "messages"}`, the schema of
HuggingFaceH4/ultrachat_200k: `prompt` is the first user message and `prompt_id` the
sha256 hex digest of it. Conversion keeps bad values as they are (a role `"bot"`, an
empty content) so that `chattune.data.schema.check_messages` can name them; it fails
only when there is nothing to convert.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from chattune.data.schema import MESSAGES_NOT_LIST, MISSING_MESSAGES, Problem

FORMAT_OPENAI = "openai"
FORMAT_SHAREGPT = "sharegpt"
FORMAT_ALPACA = "alpaca"
FORMATS = (FORMAT_OPENAI, FORMAT_SHAREGPT, FORMAT_ALPACA)

# ShareGPT speaker names seen in the wild, mapped to chat roles.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


class ConversionError(ValueError):
    """A row has no conversation that can be converted.

    Args:
        problem: the schema problem (reason and detail) to report for this row.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def prompt_id(prompt: str) -> str:
    """The ultrachat `prompt_id` of a prompt: the sha256 hex digest of its UTF-8 bytes."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def detect_format(row: dict[str, Any]) -> str | None:
    """Name the format of a row from its fields.

    Args:
        row: one dataset row (a JSON object).

    Returns:
        `"openai"`, `"sharegpt"`, `"alpaca"`, or None when no format matches.
    """
    if "messages" in row:
        return FORMAT_OPENAI
    if "conversations" in row:
        return FORMAT_SHAREGPT
    if "instruction" in row and "output" in row:
        return FORMAT_ALPACA
    return None


def to_messages(row: dict[str, Any], fmt: str | None = None) -> list[Any]:
    """Convert a row to a list of `{"role", "content"}` messages.

    A `messages` or `conversations` field that is a string (a CSV cell) is parsed as JSON.

    Args:
        row: one dataset row.
        fmt: its format; detected when None.

    Returns:
        The messages. Items that are not objects are kept as they are, for the schema
        check to report.

    Raises:
        ConversionError: no known format, or the conversation field is not a list.
    """
    fmt = fmt or detect_format(row)
    if fmt == FORMAT_OPENAI:
        items = _json_list(row, "messages")
        return [_project(m, "role", "content") for m in items]
    if fmt == FORMAT_SHAREGPT:
        items = _json_list(row, "conversations")
        messages = [_sharegpt_message(m) for m in items]
        system = row.get("system")
        if isinstance(system, str) and system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return messages
    if fmt == FORMAT_ALPACA:
        return _alpaca_messages(row)
    names = sorted(map(str, row))
    keys = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    raise ConversionError(
        Problem(
            MISSING_MESSAGES,
            f"no `messages`, `conversations` or `instruction`+`output` field "
            f"(fields: {keys or 'none'})",
        )
    )


def to_ultrachat(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Convert a row of any known format to the ultrachat schema.

    An existing string `prompt` and `prompt_id` are kept (ultrachat rows keep theirs);
    otherwise they are computed from the first user message. Other fields are dropped.

    Args:
        row: one dataset row.

    Returns:
        `(format, {"prompt", "prompt_id", "messages"})`.

    Raises:
        ConversionError: no known format, or the conversation field is not a list.

    Example:
        >>> to_ultrachat({"instruction": "Hi", "output": "Hello!"})[1]["messages"]
        [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
    """
    fmt = detect_format(row)
    messages = to_messages(row, fmt)
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        prompt = first_user_content(messages)
    pid = row.get("prompt_id")
    if not isinstance(pid, str) or not pid:
        pid = prompt_id(prompt)
    return fmt or "", {"prompt": prompt, "prompt_id": pid, "messages": messages}


def first_user_content(messages: list[Any]) -> str:
    """The content of the first user message with string content, else `""`."""
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def _json_list(row: dict[str, Any], field: str) -> list[Any]:
    value = row.get(field)
    if isinstance(value, str):  # a CSV cell, or a parquet string column
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConversionError(
                Problem(MESSAGES_NOT_LIST, f"`{field}` is a string that is not JSON ({exc.msg})")
            ) from None
    if value is None:
        raise ConversionError(Problem(MISSING_MESSAGES, f"field `{field}` is missing or null"))
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise ConversionError(Problem(MESSAGES_NOT_LIST, f"`{field}` is a {type(value).__name__}"))
    return value


def _project(msg: Any, role_key: str, content_key: str) -> Any:
    # Extra keys (name, weight, tool_calls) are not part of the ultrachat schema.
    if not isinstance(msg, dict):
        return msg
    return {"role": msg.get(role_key), "content": msg.get(content_key)}


def _sharegpt_message(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return msg
    if "from" not in msg and "role" in msg:  # some ShareGPT dumps use OpenAI keys inside
        return _project(msg, "role", "content")
    speaker = msg.get("from")
    role = SHAREGPT_ROLES.get(speaker.lower(), speaker) if isinstance(speaker, str) else speaker
    return {"role": role, "content": msg.get("value")}


def _alpaca_messages(row: dict[str, Any]) -> list[Any]:
    instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
    user: Any = instruction
    if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
        user = f"{instruction}\n\n{extra}"
    messages: list[Any] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": output})
    return messages
