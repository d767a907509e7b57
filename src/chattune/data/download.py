"""`chattune data download`: the first P% of every split, written as `D/<split>.jsonl`.

Three sources, one output shape (`{"prompt", "prompt_id", "messages"}` per line, the
schema of HuggingFaceH4/ultrachat_200k, readable by `pd.read_json(path, lines=True)`):

- a hub dataset id (`HuggingFaceH4/ultrachat_200k`), through `datasets.load_dataset`;
- `chitchat`, the offline corpus (see `chattune.data.chitchat`);
- a local file or folder (see `chattune.data.readers`), converted from OpenAI messages,
  ShareGPT or Alpaca rows.

Every file is written to a temporary name and renamed, so a failed or interrupted run
leaves no half-written split.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.data import chitchat, hub
from chattune.data.formats import ConversionError, to_ultrachat
from chattune.data.readers import SUFFIXES, count_records, iter_records, split_files
from chattune.data.schema import INVALID_JSON, NOT_OBJECT, Problem, check_messages
from chattune.errors import DatasetError, DatasetInvalid, InvalidParameter

# (split, rows written so far, rows to write)
ProgressFn = Callable[[str, int, int], None]
_PROGRESS_EVERY = 1000


@dataclass
class SplitResult:
    """One written split.

    Args:
        name: split name (the file is `<name>.jsonl`).
        path: the file written.
        rows: rows written.
        source_rows: rows of the whole split at the source, before the percentage.
        dropped: rows that could not be converted, by reason (not written).
        schema_invalid: rows written that break the conversation schema (wrong roles,
            empty content, ...); the preprocess step drops them and says why.
    """

    name: str
    path: Path
    rows: int
    source_rows: int
    dropped: Counter[str] = field(default_factory=Counter)
    schema_invalid: int = 0


@dataclass
class DownloadResult:
    """What `download_dataset` wrote.

    Args:
        dataset: the `--dataset` value.
        source: `hub`, `chitchat` or `local`.
        download_dir: the output folder.
        split_pc: the percentage taken of each split.
        splits: one `SplitResult` per split, in source order.
        notes: source-level counts of what conversion removed (chitchat), by kind.
    """

    dataset: str
    source: str
    download_dir: Path
    split_pc: float
    splits: list[SplitResult] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "dataset": self.dataset,
            "source": self.source,
            "download_dir": str(self.download_dir),
            "split_pc": self.split_pc,
            "splits": [
                {
                    "name": s.name,
                    "path": str(s.path),
                    "rows": s.rows,
                    "source_rows": s.source_rows,
                    "dropped": dict(s.dropped),
                    "schema_invalid": s.schema_invalid,
                }
                for s in self.splits
            ],
            "notes": dict(self.notes),
        }


def check_split_pc(split_pc: float | str) -> float:
    """Parse and check a split percentage (a number, or its text as typed on the CLI).

    Raises:
        InvalidParameter: not a number in (0, 100].
    """
    try:
        value = float(split_pc.strip().removesuffix("%") if isinstance(split_pc, str) else split_pc)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= 100:  # also rejects NaN
        raise InvalidParameter(
            f"--split-pc is {split_pc!r}; it must be a percentage greater than 0 and at most "
            "100 (the share of each split to keep, from its start).",
            fix="pass e.g. `--split-pc 5` for the first 5% of every split, `100` for all",
        )
    return value


def rows_for_pc(total: int, split_pc: float) -> int:
    """Rows in the first `split_pc` percent of `total`, rounded like `datasets`'
    `split[:P%]` (`round(P * total / 100)`, half to even)."""
    return round(split_pc * total / 100.0)


def download_dataset(
    dataset: str,
    download_dir: Path,
    split_pc: float | str = 100.0,
    *,
    progress: ProgressFn | None = None,
) -> DownloadResult:
    """Write the first `split_pc` percent of every split of `dataset` to `download_dir`.

    Args:
        dataset: a hub id (`HuggingFaceH4/ultrachat_200k`), `chitchat`, or a local file or
            folder of `.jsonl`/`.json`/`.csv`/`.parquet` files (one split per file, named
            by its stem). `chitchat` always names the corpus: write `./chitchat` for a
            local folder of that name.
        download_dir: output folder, created if missing; `<split>.jsonl` files are
            replaced.
        split_pc: percent of each split to keep, from its start, in (0, 100].
        progress: called as `progress(split, rows_done, rows_total)` while writing.

    Returns:
        A `DownloadResult` naming each file and its row counts.

    Raises:
        InvalidParameter: `split_pc` outside (0, 100].
        DatasetError: the source cannot be reached or read (the hub offline: the fix
            names `--dataset chitchat`).
        DatasetInvalid: a local split has rows but none can be converted.

    Example:
        >>> res = download_dataset("chitchat", Path("data"), 5)
        >>> [s.name for s in res.splits]
        ['train_sft', 'test_sft', 'train_gen', 'test_gen']
    """
    split_pc = check_split_pc(split_pc)
    download_dir = Path(download_dir)
    local = Path(dataset).expanduser()
    if dataset == chitchat.NAME:
        result = DownloadResult(dataset, "chitchat", download_dir, split_pc)
        _download_chitchat(result, progress)
    elif local.exists():
        result = DownloadResult(dataset, "local", download_dir, split_pc)
        _download_local(result, local, progress)
    elif _looks_local(dataset):
        raise DatasetError(
            f"Dataset path {dataset} does not exist.",
            fix="give an existing file or folder, a hub id (owner/name), or `chitchat`",
        )
    else:
        result = DownloadResult(dataset, "hub", download_dir, split_pc)
        _download_hub(result, progress)
    return result


def _looks_local(dataset: str) -> bool:
    return (
        dataset.startswith((".", "/", "~"))
        or Path(dataset).suffix.lower() in SUFFIXES
        or dataset.count("/") > 1
    )


def _download_chitchat(result: DownloadResult, progress: ProgressFn | None) -> None:
    corpus = chitchat.load_chitchat()
    result.notes.update(corpus.dropped)
    for name, rows in corpus.splits.items():
        n = rows_for_pc(len(rows), result.split_pc)
        split = SplitResult(name, result.download_dir / f"{name}.jsonl", 0, len(rows))
        _write_split(split, iter(rows[:n]), n, progress)
        result.splits.append(split)


def _download_hub(result: DownloadResult, progress: ProgressFn | None) -> None:
    for name, n, total, rows in hub.hub_splits(result.dataset, result.split_pc):
        split = SplitResult(name, result.download_dir / f"{name}.jsonl", 0, total)
        _write_split(split, _convert(split, enumerate(rows, 1)), n, progress)
        result.splits.append(split)


def _download_local(result: DownloadResult, local: Path, progress: ProgressFn | None) -> None:
    for name, file in split_files(local).items():
        total = count_records(file)
        n = rows_for_pc(total, result.split_pc)
        split = SplitResult(name, result.download_dir / f"{name}.jsonl", 0, total)
        records = _take(iter_records(file), n)

        def check(split: SplitResult = split, file: Path = file, n: int = n) -> None:
            if split.rows == 0 and split.dropped:
                reasons = ", ".join(f"{r} ({c})" for r, c in split.dropped.most_common())
                raise DatasetInvalid(
                    f"{file}: none of the first {n} rows can be converted: {reasons}.",
                    fix=f"run `chattune data validate {file}` to see each row and why",
                )

        _write_split(split, _convert(split, records), n, progress, before_rename=check)
        result.splits.append(split)


def _take(records: Iterable[Any], n: int) -> Iterator[tuple[int, Any]]:
    """The first `n` records as `(line, value)`; parse errors come as `Problem` values."""
    if n <= 0:
        return
    for i, rec in enumerate(records, 1):
        yield rec.line, (Problem(INVALID_JSON, rec.error) if rec.error is not None else rec.value)
        if i >= n:
            return


def _convert(split: SplitResult, rows: Iterable[tuple[int, Any]]) -> Iterator[dict[str, Any]]:
    """Convert rows to the ultrachat schema, counting what is dropped and what is invalid."""
    for _line, value in rows:
        if isinstance(value, Problem):
            split.dropped[value.reason] += 1
            continue
        if not isinstance(value, dict):
            split.dropped[NOT_OBJECT] += 1
            continue
        try:
            _, row = to_ultrachat(value)
        except ConversionError as exc:
            split.dropped[exc.problem.reason] += 1
            continue
        if check_messages(row["messages"]) is not None:
            split.schema_invalid += 1
        yield row


def _write_split(
    split: SplitResult,
    rows: Iterator[dict[str, Any]],
    total: int,
    progress: ProgressFn | None,
    before_rename: Callable[[], None] | None = None,
) -> None:
    """Write rows as JSON lines to a temporary file, then rename it to `split.path`.

    `before_rename` may raise to abandon the file (the previous one, if any, stays).
    """
    split.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = split.path.with_name(f".{split.path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            if progress:
                progress(split.name, 0, total)
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                split.rows += 1
                if progress and split.rows % _PROGRESS_EVERY == 0:
                    progress(split.name, split.rows, total)
            f.flush()
            os.fsync(f.fileno())
        if before_rename:
            before_rename()
        os.replace(tmp, split.path)
    finally:
        tmp.unlink(missing_ok=True)
    if progress:
        progress(split.name, total, total)
