"""The offline corpus: the Chit Chat Challenge dataset, shaped and split like ultrachat_200k.

The PyPI package `chitchat-dataset` (MIT) ships `dataset.json`: 7,168 human conversations,
`{id: {"messages": [[{"text", "timestamp", "sender"}, ...], ...], ...}}`, where each inner
list is consecutive utterances of one sender. Each conversation becomes alternating
user/assistant messages:

- one turn per run of one sender: its utterances (stripped, empty ones removed and
  counted) joined with "\\n"; consecutive groups of the same sender are merged;
- the first sender is the user, turns then alternate (so roles always alternate);
- a last turn from the user is removed and counted, so that every conversation ends with
  the assistant, as in ultrachat;
- conversations left with fewer than 2 turns are dropped and counted;
- conversations identical to another once converted (the corpus holds a few under two
  ids) are kept once, so that no conversation is in two splits; the copies are counted.

The kept conversations are ordered by the sha256 of their id (stable across runs and
machines) and cut into `train_sft`, `test_sft`, `train_gen`, `test_gen`, disjoint, in
ultrachat_200k's proportions (`SPLIT_ROWS`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.data.formats import prompt_id
from chattune.errors import DatasetError

NAME = "chitchat"
# Rows per split of HuggingFaceH4/ultrachat_200k: the proportions the corpus is cut in.
SPLIT_ROWS = {"train_sft": 207_865, "test_sft": 23_110, "train_gen": 256_032, "test_gen": 28_304}

DROP_EMPTY_UTTERANCE = "empty utterances removed"
DROP_TRAILING_USER = "last user turns removed"
DROP_FEW_TURNS = "conversations dropped: fewer than 2 turns"
DROP_DUPLICATE = "conversations dropped: duplicate of another"


@dataclass
class ChitchatSplits:
    """The converted corpus, split.

    Args:
        splits: split name -> rows in the ultrachat schema, in split order.
        dropped: what was removed, by kind (see the `DROP_*` constants), with counts.
        source: the `dataset.json` read.
    """

    splits: dict[str, list[dict[str, Any]]]
    dropped: Counter[str] = field(default_factory=Counter)
    source: Path | None = None


def chitchat_path() -> Path:
    """Find `dataset.json` of the installed `chitchat-dataset` package, without importing it.

    Raises:
        DatasetError: the package is not installed, or has no dataset.json.
    """
    spec = importlib.util.find_spec("chitchat_dataset")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "dataset.json"
        if path.is_file():
            return path
    raise DatasetError(
        "The offline dataset `chitchat` needs the package chitchat-dataset, which is not "
        "installed (or has no dataset.json).",
        fix="pip install --no-deps chitchat-dataset",
    )


def convert_conversation(conv: dict[str, Any], dropped: Counter[str]) -> list[dict[str, str]]:
    """Turn one chitchat conversation into alternating user/assistant messages.

    Args:
        conv: `{"messages": [[{"text", "sender", ...}, ...], ...], ...}`.
        dropped: counter updated with what was removed (`DROP_*` keys).

    Returns:
        The messages, possibly fewer than 2 (the caller drops those).
    """
    turns: list[tuple[Any, list[str]]] = []  # (sender, texts)
    for group in conv.get("messages") or []:
        for utt in group:
            text = (utt.get("text") or "").strip()
            if not text:
                dropped[DROP_EMPTY_UTTERANCE] += 1
                continue
            sender = utt.get("sender")
            if turns and turns[-1][0] == sender:
                turns[-1][1].append(text)
            else:
                turns.append((sender, [text]))
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "\n".join(texts)}
        for i, (_, texts) in enumerate(turns)
    ]
    if messages and messages[-1]["role"] == "user" and len(messages) > 1:
        messages.pop()
        dropped[DROP_TRAILING_USER] += 1
    return messages


def split_sizes(n: int, weights: dict[str, int] = SPLIT_ROWS) -> dict[str, int]:
    """Cut `n` rows in the proportions of `weights` (largest remainder, ties in split order).

    Each split gets `floor(n * w / W)` rows (W the sum of weights); the rows left over go,
    one each, to the splits with the largest fractional parts. The sizes sum to `n`.

    Example:
        >>> split_sizes(1000)
        {'train_sft': 403, 'test_sft': 45, 'train_gen': 497, 'test_gen': 55}
    """
    total = sum(weights.values())
    sizes = {name: n * w // total for name, w in weights.items()}
    left = n - sum(sizes.values())
    by_remainder = sorted(weights, key=lambda s: -((n * weights[s]) % total))
    for name in by_remainder[:left]:
        sizes[name] += 1
    return sizes


def load_chitchat(path: Path | None = None) -> ChitchatSplits:
    """Read, convert and split the chitchat corpus (all rows; take percentages after).

    Args:
        path: a chitchat `dataset.json`; default: the installed package's.

    Returns:
        `ChitchatSplits` with the four ultrachat split names.

    Raises:
        DatasetError: the package is missing or the file is not a chitchat dataset.
    """
    path = Path(path) if path else chitchat_path()
    try:
        with path.open(encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(
            f"{path} cannot be read as the chitchat dataset: {exc}",
            fix="pip install --force-reinstall --no-deps chitchat-dataset",
        ) from exc
    if not isinstance(raw, dict):
        raise DatasetError(
            f"{path} is not a chitchat dataset: expected an object of conversations, "
            f"got a {type(raw).__name__}.",
            fix="pip install --force-reinstall --no-deps chitchat-dataset",
        )
    dropped: Counter[str] = Counter()
    keyed: list[tuple[str, dict[str, Any]]] = []
    for conv_id in list(raw):
        conv = raw.pop(conv_id)  # free the raw conversation as we go
        messages = convert_conversation(conv if isinstance(conv, dict) else {}, dropped)
        if len(messages) < 2:
            dropped[DROP_FEW_TURNS] += 1
            continue
        prompt = messages[0]["content"]
        row = {"prompt": prompt, "prompt_id": prompt_id(prompt), "messages": messages}
        keyed.append((hashlib.sha256(str(conv_id).encode("utf-8")).hexdigest(), row))
    keyed.sort(key=lambda kv: kv[0])
    keyed = _unique(keyed, dropped)
    splits: dict[str, list[dict[str, Any]]] = {}
    start = 0
    for name, size in split_sizes(len(keyed)).items():
        splits[name] = [row for _, row in keyed[start : start + size]]
        start += size
    return ChitchatSplits(splits, dropped, path)


def _unique(
    keyed: list[tuple[str, dict[str, Any]]], dropped: Counter[str]
) -> list[tuple[str, dict[str, Any]]]:
    """Keep the first of identical conversations (in sha256 order, so the choice is stable)."""
    seen: set[str] = set()
    out = []
    for key, row in keyed:
        content = hashlib.sha256(
            json.dumps(row["messages"], ensure_ascii=False).encode("utf-8")
        ).hexdigest()
        if content in seen:
            dropped[DROP_DUPLICATE] += 1
            continue
        seen.add(content)
        out.append((key, row))
    return out
