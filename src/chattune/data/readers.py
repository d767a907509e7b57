"""Streaming readers for dataset files: one record at a time, never the whole file.

| suffix     | read as                                                  | `Record.line` is      |
| ---------- | -------------------------------------------------------- | --------------------- |
| `.jsonl`   | JSON lines, line by line                                 | the line number       |
| `.json`    | a JSON array, decoded element by element; else JSON lines | the element's line    |
| `.csv`     | rows as `{header: cell}` dicts (cells are strings)        | the row's first line  |
| `.parquet` | record batches of 1,024 rows                             | the row number        |

A record that cannot be parsed comes back with `value=None` and `error` set, so a caller
can report it by line and go on (JSON lines, CSV) or stop (a broken JSON array cannot be
resynchronised, so its reader stops after the error).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from chattune.errors import DatasetError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_CHUNK = 1 << 20  # characters read at a time from a JSON array file
_PARQUET_BATCH = 1024
_WS = re.compile(r"[ \t\r\n]*")


class Record(NamedTuple):
    """One record of a dataset file.

    Args:
        line: 1-based line where the record starts (row number for parquet).
        value: the parsed value (a dict for CSV and parquet), None when `error` is set.
        error: why the record could not be parsed, else None.
    """

    line: int
    value: Any
    error: str | None = None


def check_path(path: Path) -> Path:
    """Check that `path` is an existing file with a supported suffix.

    Raises:
        DatasetError: the file is missing or its suffix is not supported.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"Dataset file {path} does not exist or is not a file.",
            fix="give the path of a .jsonl, .json, .csv or .parquet file",
        )
    if path.suffix.lower() not in SUFFIXES:
        raise DatasetError(
            f"Dataset file {path} has suffix {path.suffix!r}, which chattune cannot read.",
            fix=f"convert it to one of {', '.join(SUFFIXES)}",
        )
    return path


def split_files(path: Path) -> dict[str, Path]:
    """Map split names to files: a file is one split named by its stem; a folder holds one
    split per supported file.

    Raises:
        DatasetError: nothing readable there, or two files share a stem.
    """
    path = Path(path)
    if path.is_file():
        return {path.stem: check_path(path)}
    if not path.is_dir():
        raise DatasetError(
            f"{path} is neither a dataset file nor a folder.",
            fix="give a hub dataset id, `chitchat`, or a local .jsonl/.json/.csv/.parquet path",
        )
    splits: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        if not file.is_file() or file.suffix.lower() not in SUFFIXES:
            continue
        if file.stem in splits:
            raise DatasetError(
                f"Folder {path} has two files for split {file.stem!r}: "
                f"{splits[file.stem].name} and {file.name}.",
                fix="keep one file per split name",
            )
        splits[file.stem] = file
    if not splits:
        raise DatasetError(
            f"Folder {path} holds no {', '.join(SUFFIXES)} file.",
            fix="put one file per split in the folder (train.jsonl, test.jsonl, ...)",
        )
    return splits


def iter_records(path: Path) -> Iterator[Record]:
    """Stream the records of a dataset file.

    Args:
        path: a `.jsonl`, `.json`, `.csv` or `.parquet` file.

    Returns:
        An iterator of `Record`, in file order.

    Raises:
        DatasetError: the file is missing, unsupported, or not a parquet file.
    """
    path = check_path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _iter_csv(path)
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix == ".json" and _first_char(path) == "[":
        return _iter_json_array(path)
    return _iter_jsonl(path)


def count_records(path: Path) -> int:
    """Count the records of a file cheaply (no JSON decoding for JSON lines, metadata for
    parquet). Blank lines are not records.

    Raises:
        DatasetError: as `iter_records`.
    """
    path = check_path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_file(path).metadata.num_rows
    if suffix == ".jsonl" or (suffix == ".json" and _first_char(path) != "["):
        with path.open("rb") as f:
            return sum(1 for raw in f if raw.strip())
    return sum(1 for _ in iter_records(path))


def _first_char(path: Path) -> str:
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""


def _iter_jsonl(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield Record(line_no, json.loads(raw))
            except json.JSONDecodeError as exc:
                yield Record(line_no, None, f"{exc.msg} at column {exc.colno}")
            except UnicodeDecodeError as exc:
                yield Record(line_no, None, f"not UTF-8 text ({exc.reason})")


class _ArrayCursor:
    """A window over a JSON array file: the unread text and its line number."""

    def __init__(self, f: IO[str]) -> None:
        self.f, self.buf, self.pos, self.line, self.eof = f, "", 0, 1, False

    def fill(self) -> None:
        chunk = self.f.read(_CHUNK)
        self.eof = not chunk
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """Skip whitespace; the next character, `""` at end of file."""
        while True:
            self.advance(_WS.match(self.buf, self.pos).end())  # type: ignore[union-attr]
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos : self.pos + 1]
            self.fill()


def _iter_json_array(path: Path) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8-sig") as f:
        cur = _ArrayCursor(f)
        cur.peek()
        cur.advance(cur.pos + 1)  # the '[' seen by _first_char
        if cur.peek() == "]":
            return
        while True:
            if cur.peek() == "":
                yield Record(cur.line, None, "unexpected end of file: the array has no ']'")
                return
            start = cur.line
            try:
                value, end = decoder.raw_decode(cur.buf, cur.pos)
            except json.JSONDecodeError as exc:
                truncated = exc.pos >= len(cur.buf) - 1 or exc.msg.startswith("Unterminated")
                if truncated and not cur.eof:
                    cur.fill()  # the element runs past the window: read more and retry
                    continue
                line = cur.line + cur.buf.count("\n", cur.pos, exc.pos)
                yield Record(line, None, f"{exc.msg} (the rest of the array cannot be read)")
                return
            if end >= len(cur.buf) and not cur.eof:
                cur.fill()  # a number or literal may continue in the next chunk
                continue
            yield Record(start, value)
            cur.advance(end)
            sep = cur.peek()
            if sep == ",":
                cur.advance(cur.pos + 1)
            elif sep == "]":
                return
            else:
                found = repr(sep) if sep else "end of file"
                yield Record(cur.line, None, f"expected ',' or ']' between elements, got {found}")
                return


def _iter_csv(path: Path) -> Iterator[Record]:
    # A JSON `messages` cell can be far longer than csv's 128 KiB default field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(1, None, f"CSV header cannot be read ({exc})")
            return
        end = reader.line_num
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Record(start, None, f"CSV row cannot be read ({exc})")
                return
            end = reader.line_num
            if not cells:
                continue
            if len(cells) != len(header):
                yield Record(
                    start, None, f"CSV row has {len(cells)} cells, the header has {len(header)}"
                )
                continue
            yield Record(start, dict(zip(header, cells, strict=True)))


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise DatasetError(
            f"{path} cannot be read as parquet: {exc}",
            fix="check that the file is a complete parquet file",
        ) from exc


def _iter_parquet(path: Path) -> Iterator[Record]:
    pf = _parquet_file(path)
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH):
        for value in batch.to_pylist():
            row += 1
            yield Record(row, value)
