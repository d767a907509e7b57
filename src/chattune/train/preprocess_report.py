"""The report of the preprocess step (`report.json`): rows read, splits, drops by reason."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chattune.data import schema

FORMAT_VERSION = 1  # bump when the output changes for the same inputs: it is in the cache key
MAX_EXAMPLES = 5

DROP_TRUNCATED = "no assistant tokens left after truncation"
DROP_NO_LABELS = "chat template wrote no assistant tokens"
# Stable metric names (`dropped_<slug>`) for the reasons of `chattune.data.schema`.
_SLUGS = {
    schema.INVALID_JSON: "invalid_json",
    schema.NOT_OBJECT: "not_object",
    schema.MISSING_MESSAGES: "missing_messages",
    schema.EMPTY_MESSAGES: "empty_messages",
    schema.MESSAGES_NOT_LIST: "messages_not_list",
    schema.MESSAGE_NOT_OBJECT: "message_not_object",
    schema.BAD_ROLE: "bad_role",
    schema.BAD_CONTENT: "bad_content",
    schema.SYSTEM_NOT_FIRST: "system_not_first",
    schema.FIRST_NOT_USER: "first_not_user",
    schema.NOT_ALTERNATING: "not_alternating",
    schema.NO_ASSISTANT: "no_assistant",
    schema.TOO_FEW_MESSAGES: "too_few_messages",
    DROP_TRUNCATED: "truncated_no_assistant",
    DROP_NO_LABELS: "template_no_assistant",
}


def reason_slug(reason: str) -> str:
    """The metric-safe name of a drop reason: `one message or fewer` -> `too_few_messages`."""
    return _SLUGS.get(reason) or re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_")


# -- report ---------------------------------------------------------------------------------------
@dataclass
class DroppedExample:
    file: str
    line: int  # 1-based line in `file` (row number for parquet)
    detail: str


@dataclass
class DroppedRows:
    reason: str  # the human text, e.g. "one message or fewer"
    count: int = 0
    examples: list[DroppedExample] = field(default_factory=list)


@dataclass
class SplitStats:
    source: str  # where the rows come from: "train_file rows 1-80 of 100 valid"
    rows_in: int = 0  # rows assigned to the split (they passed the schema)
    rows_out: int = 0  # rows written
    tokens: int = 0
    label_tokens: int = 0
    truncated: int = 0  # rows written cut to max_seq_length


@dataclass
class PreprocessReport:
    """What `run_preprocess` did; mirrors `report.json`.

    Args:
        max_seq_length: the tokens kept per conversation (-1 resolved to the model's context).
        split_mode: which files were given: `train`, `train+test`, `train+validation`, ...
        rows_read: rows read per data file parameter (`train_file`, ...).
        splits: per split, rows in/out, tokens, label tokens, truncated rows.
        dropped: dropped rows by reason slug (see `reason_slug`), with the first examples.
        cache_key: `preprocess_cache_key` of the config.
        seconds: wall time of the step.
    """

    max_seq_length: int
    split_mode: str
    rows_read: dict[str, int]
    splits: dict[str, SplitStats]
    dropped: dict[str, DroppedRows]
    cache_key: str
    seconds: float = 0.0

    @property
    def truncated(self) -> int:
        return sum(s.truncated for s in self.splits.values())

    def metrics(self) -> dict[str, float]:
        """Flat metrics for tracking: `train_rows`, `train_label_tokens`, `dropped_<reason>`..."""
        out: dict[str, float] = {"max_seq_length": float(self.max_seq_length)}
        for name, s in self.splits.items():
            out[f"{name}_rows"] = float(s.rows_out)
            out[f"{name}_tokens"] = float(s.tokens)
            out[f"{name}_label_tokens"] = float(s.label_tokens)
            out[f"{name}_truncated"] = float(s.truncated)
        out["truncated_rows"] = float(self.truncated)
        out["dropped_rows"] = float(sum(d.count for d in self.dropped.values()))
        for slug, d in self.dropped.items():
            out[f"dropped_{slug}"] = float(d.count)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "truncated": self.truncated, "format_version": FORMAT_VERSION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessReport:
        dropped = {
            k: DroppedRows(v["reason"], v["count"], [DroppedExample(**e) for e in v["examples"]])
            for k, v in d["dropped"].items()
        }
        return cls(
            max_seq_length=d["max_seq_length"],
            split_mode=d["split_mode"],
            rows_read=d["rows_read"],
            splits={k: SplitStats(**v) for k, v in d["splits"].items()},
            dropped=dropped,
            cache_key=d["cache_key"],
            seconds=d.get("seconds", 0.0),
        )

    @classmethod
    def load(cls, output_dir: Path) -> PreprocessReport:
        """Read `output_dir/report.json` (present only when the step completed)."""
        return cls.from_dict(json.loads((Path(output_dir) / "report.json").read_text()))


class Drops:
    """Dropped rows by reason slug, counted, with the first `MAX_EXAMPLES` of each."""

    def __init__(self) -> None:
        self.by_slug: dict[str, DroppedRows] = {}

    def add(self, reason: str, file: Path, line: int, detail: str) -> None:
        d = self.by_slug.setdefault(reason_slug(reason), DroppedRows(reason))
        d.count += 1
        if len(d.examples) < MAX_EXAMPLES:
            d.examples.append(DroppedExample(file.name, line, detail))

    def total(self) -> int:
        return sum(d.count for d in self.by_slug.values())

    def summary(self) -> str:
        return ", ".join(f"{d.count} {d.reason}" for d in self.by_slug.values()) or "none"
