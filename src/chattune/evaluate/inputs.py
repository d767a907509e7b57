"""What the evaluate step reads from the preprocess step's outputs: the tokenized test split
and the raw test conversations, and the (prompt, reference) pairs generated from them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from chattune.errors import DatasetInvalid
from chattune.train.packing import IGNORE_INDEX

Conversation = list[dict[str, str]]


def read_tokenized(path: Path) -> list[tuple[list[int], list[int]]]:
    """The (input_ids, labels) rows of a tokenized split written by the preprocess step.

    Raises:
        DatasetInvalid: a column is missing, a row's lists differ in length, or no row has
            a label token to score.
    """
    names = pq.read_schema(path).names
    missing = [c for c in ("input_ids", "labels") if c not in names]
    if missing:
        raise DatasetInvalid(
            f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(names)}).",
            fix="run the preprocess step again to write input_ids and labels.",
        )
    table = pq.read_table(path, columns=["input_ids", "labels"])
    ids, labels = table.column("input_ids").to_pylist(), table.column("labels").to_pylist()
    rows = []
    for i, (a, b) in enumerate(zip(ids, labels, strict=True)):
        if a is None or b is None or len(a) != len(b):
            raise DatasetInvalid(
                f"{path} row {i}: input_ids and labels differ in length or are missing.",
                fix="run the preprocess step again.",
            )
        rows.append((list(a), list(b)))
    if not any(lab != IGNORE_INDEX for _, labels_ in rows for lab in labels_[1:]):
        raise DatasetInvalid(
            f"{path} has no label tokens (every label is {IGNORE_INDEX}): nothing to score.",
            fix="check that the test conversations have assistant replies and that "
            "`max_seq_length` leaves room for them.",
        )
    return rows


def read_conversations(path: Path) -> list[Conversation]:
    """The `messages` of each line of a `test_messages.jsonl` file.

    Raises:
        DatasetInvalid: a line is not JSON or has no `messages` list.
    """
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError):
                messages = None
            if not isinstance(messages, list):
                raise DatasetInvalid(
                    f"{path} line {n} is not a JSON object with a `messages` list.",
                    fix="run the preprocess step again.",
                )
            out.append(messages)
    return out


def last_turn_samples(
    conversations: Sequence[Conversation], sample_size: int
) -> list[tuple[int, Conversation, str]]:
    """(index, prompt messages, reference) for the first `sample_size` usable conversations.

    The reference is the content of the conversation's last assistant message and the prompt
    the messages before it; conversations with no assistant message, or with nothing before
    it, are skipped.
    """
    out = []
    for i, messages in enumerate(conversations):
        last = max((j for j, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
        if last == 0:
            continue
        out.append((i, messages[:last], str(messages[last].get("content") or "")))
        if len(out) == sample_size:
            break
    return out
