"""Check every row of a dataset file against the conversation schema, streaming.

This is what `chattune data validate` prints and what the pipeline's preprocess step
reads rows through: `iter_checked` yields each row converted to the ultrachat schema with
its problem, if any; `iter_conversations` yields the good rows; `validate_file` counts, and
`unusable` says when a whole file holds nothing to train on (empty, unreadable, no valid row).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.data.formats import FORMAT_OPENAI, ConversionError, detect_format, to_ultrachat
from chattune.data.readers import Record, iter_records
from chattune.data.schema import INVALID_JSON, NOT_OBJECT, Problem, check_messages
from chattune.errors import DatasetInvalid

MAX_LISTED = 50
_PROGRESS_EVERY = 2000


@dataclass(frozen=True)
class CheckedRow:
    """One row of a file, converted and checked.

    Args:
        line: 1-based line of the row in its file (row number for parquet).
        format: the detected format (`openai`, `sharegpt`, `alpaca`), None if unknown.
        row: the row in the ultrachat schema, None when it could not be converted.
        problem: why the row breaks the schema, None when it is valid.
    """

    line: int
    format: str | None
    row: dict[str, Any] | None
    problem: Problem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_record(record: Record) -> CheckedRow:
    """Convert one record to the ultrachat schema and check its messages.

    Args:
        record: a record from `chattune.data.readers.iter_records`.

    Returns:
        The `CheckedRow`; its `problem` says what is wrong, naming the field.
    """
    if record.error is not None:
        return CheckedRow(record.line, None, None, Problem(INVALID_JSON, record.error))
    value = record.value
    if not isinstance(value, dict):
        return CheckedRow(
            record.line, None, None, Problem(NOT_OBJECT, f"got a {type(value).__name__}")
        )
    fmt = detect_format(value)
    try:
        _, row = to_ultrachat(value)
    except ConversionError as exc:
        return CheckedRow(record.line, fmt, None, exc.problem)
    problem = check_messages(row["messages"])
    if problem and fmt != FORMAT_OPENAI:
        problem = Problem(problem.reason, f"{problem.detail} (after converting {fmt} format)")
    return CheckedRow(record.line, fmt, row, problem)


def iter_checked(path: Path) -> Iterator[CheckedRow]:
    """Stream every row of a file, converted and checked.

    Args:
        path: a `.jsonl`, `.json`, `.csv` or `.parquet` file.

    Returns:
        An iterator of `CheckedRow`, good and bad, in file order.

    Raises:
        DatasetError: the file is missing or cannot be opened.
    """
    for record in iter_records(Path(path)):
        yield check_record(record)


def iter_conversations(path: Path, *, skip_invalid: bool = False) -> Iterator[dict[str, Any]]:
    """Stream the rows of a file in the ultrachat schema.

    Args:
        path: a `.jsonl`, `.json`, `.csv` or `.parquet` file in any known format.
        skip_invalid: skip rows that break the schema instead of raising. Use
            `iter_checked` to learn which rows were skipped and why.

    Returns:
        An iterator of `{"prompt", "prompt_id", "messages"}` dicts.

    Raises:
        DatasetInvalid: a row breaks the schema and `skip_invalid` is False.
        DatasetError: the file is missing or cannot be opened.

    Example:
        >>> for row in iter_conversations("train_sft.jsonl"):
        ...     print(row["messages"][0]["content"])
    """
    for checked in iter_checked(path):
        if checked.ok:
            assert checked.row is not None
            yield checked.row
        elif not skip_invalid:
            raise DatasetInvalid(
                f"{path}, line {checked.line}: {checked.problem}.",
                fix=f"run `chattune data validate {path}` to list every bad row, "
                "then fix or remove them",
            )


@dataclass
class ValidationReport:
    """What `validate_file` found.

    Args:
        path: the file checked.
        total: rows read (blank lines are not rows).
        valid: rows that pass the schema.
        formats: rows per detected format.
        reasons: bad rows per reason (every bad row counted, not only the listed ones).
        bad: the first `max_listed` bad rows.
    """

    path: Path
    total: int = 0
    valid: int = 0
    formats: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    bad: list[CheckedRow] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return self.total - self.valid

    @property
    def ok(self) -> bool:
        """The file holds rows, and every one is valid (an empty file is not ok)."""
        return self.total > 0 and self.invalid == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what `chattune data validate --json` prints)."""
        return {
            "path": str(self.path),
            "total": self.total,
            "valid": self.valid,
            "invalid": self.invalid,
            "formats": dict(self.formats),
            "reasons": dict(self.reasons.most_common()),
            "bad_rows": [
                {
                    "line": b.line,
                    "format": b.format,
                    "reason": b.problem.reason if b.problem else None,
                    "detail": b.problem.detail if b.problem else None,
                }
                for b in self.bad
            ],
        }


def validate_file(
    path: Path,
    *,
    max_listed: int = MAX_LISTED,
    progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Check every row of a file; streamed, so any size fits in memory.

    Args:
        path: a `.jsonl`, `.json`, `.csv` or `.parquet` file.
        max_listed: how many bad rows to keep in `report.bad` (all are counted).
        progress: called with the number of rows read so far, every few thousand rows
            and once at the end.

    Returns:
        A `ValidationReport`; `report.ok` is True when there are rows and every one is
        valid; `unusable(report)` says why a file holds nothing to train on.

    Raises:
        DatasetError: the file is missing or cannot be opened.
    """
    report = ValidationReport(Path(path))
    for checked in iter_checked(path):
        report.total += 1
        if checked.format:
            report.formats[checked.format] += 1
        if checked.problem is None:
            report.valid += 1
        else:
            report.reasons[checked.problem.reason] += 1
            if len(report.bad) < max_listed:
                report.bad.append(checked)
        if progress and report.total % _PROGRESS_EVERY == 0:
            progress(report.total)
    if progress:
        progress(report.total)
    return report


_KIND = {".jsonl": "JSON lines", ".json": "JSON", ".csv": "CSV", ".parquet": "parquet"}
_SHOWN = 3  # bad rows quoted in an `unusable` message
_EXAMPLE = (
    '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
)


@dataclass(frozen=True)
class Unusable:
    """Why a whole file holds nothing to train on, and what to do about it.

    Args:
        problem: what is wrong, without the file's name: `is empty: it holds no rows`.
        fix: what to do about it.
    """

    problem: str
    fix: str


def unusable(report: ValidationReport) -> Unusable | None:
    """Why the file of `report` holds no conversation to train on, or None when it has one.

    Empty (no rows), unreadable (no row parses: not JSON lines, say), or no row that passes
    the conversation schema; the message quotes the first bad rows by line.

    Example:
        >>> unusable(validate_file("empty.jsonl")).problem  # doctest: +SKIP
        'is empty: it holds no rows'
    """
    path = report.path
    if report.total == 0:
        return Unusable(
            "is empty: it holds no rows",
            f"put conversations in {path.name}, one a line: {_EXAMPLE}",
        )
    if report.valid > 0:
        return None
    shown = [f"line {b.line}: {b.problem}" for b in report.bad[:_SHOWN]]
    if report.invalid > len(shown) > 0:
        shown.append(f"and {report.invalid - len(shown):,} more")
    rows = f" ({'; '.join(shown)})" if shown else ""
    if set(report.reasons) == {INVALID_JSON}:
        kind = _KIND.get(path.suffix.lower(), "JSON lines")
        return Unusable(
            f"is not {kind}: none of its {report.total:,} rows can be read{rows}",
            f"write {path.name} as {kind}, one conversation a row: {_EXAMPLE}",
        )
    return Unusable(
        f"has no usable conversation: all {report.total:,} rows break the conversation "
        f"schema{rows}",
        f"run `chattune data validate {path}` to list every bad row, then fix them",
    )
