"""What the preprocess step reads: the checks of its inputs, the model's context length, the
plan of the splits, the rows of a file, and the cache key of a configuration.

`check_data_files` is the check a job's data passes before the job is queued: one streamed
pass over each file (no tokenizer), refusing what preprocess would fail on minutes later."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chattune.data.readers import SUFFIXES
from chattune.data.validate import ValidationReport, iter_checked, unusable, validate_file
from chattune.errors import DatasetError, DatasetInvalid, InvalidParameter
from chattune.train.chat_encoder import Messages
from chattune.train.preprocess_report import FORMAT_VERSION

if TYPE_CHECKING:
    from chattune.train.preprocess import PreprocessConfig

MIN_TRAIN_ROWS = 10  # training conversations preprocess needs, after drops and the split
# how the train split is cut from train_file, by split mode (`plan_splits`)
SPLIT_CUT = {
    "train": " after the 80/10/10 split",
    "train+test": " after moving the last 20% to validation",
}
DATA_FILES = ("train_file", "validation_file", "test_file")

_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|chat_template.*|special_tokens_map\.json|added_tokens\.json|vocab\..*"
    r"|merges\.txt|.*\.model|.*\.tiktoken)$"
)


def model_context_length(model_dir: Path) -> int | None:
    """`max_position_embeddings` of `model_dir/config.json` (or its text_config), if any."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    for c in (cfg, cfg.get("text_config") or {}):
        v = c.get("max_position_embeddings")
        if isinstance(v, int) and v > 0:
            return v
    return None


def resolve_max_len(cfg: PreprocessConfig) -> int:
    """`max_seq_length`, or the model's context for -1.

    Raises:
        InvalidParameter: -1 and the model's config.json gives no context length.
    """
    if cfg.max_seq_length != -1:
        return cfg.max_seq_length
    context = model_context_length(cfg.model_dir)
    if context is None:
        raise InvalidParameter(
            f"`max_seq_length` is -1 (the model's context) but {cfg.model_dir}/config.json has "
            "no max_position_embeddings.",
            fix="set `max_seq_length` to a number of tokens",
        )
    return context


def check_inputs(cfg: PreprocessConfig) -> None:
    """Every missing file or folder at once, each by its parameter."""
    problems = []
    for name, path in cfg.inputs().items():
        if not path.is_file():
            problems.append(f"`{name}` {path} is not a file")
        elif path.suffix.lower() not in SUFFIXES:
            problems.append(f"`{name}` {path} is not one of {', '.join(SUFFIXES)}")
    if not Path(cfg.model_dir).is_dir():
        problems.append(f"`model_dir` {cfg.model_dir} is not a folder")
    elif not _tokenizer_files(cfg.model_dir):
        problems.append(f"`model_dir` {cfg.model_dir} holds no tokenizer files")
    if problems:
        raise InvalidParameter(
            "preprocess cannot start: " + "; ".join(problems) + ".",
            fix="give existing data files and an imported model folder (`chattune model list`)",
        )


# Cuts of the valid rows of one file: [(end, splits)], `end` exclusive, in order.
Cuts = list[tuple[float, tuple[str, ...]]]


def plan_splits(cfg: PreprocessConfig, valid: dict[str, int]) -> tuple[str, dict[str, Cuts], dict]:
    """Split mode, cuts per file, and each split's source description."""
    n = valid["train_file"]
    inf = float("inf")
    has_val, has_test = cfg.validation_file is not None, cfg.test_file is not None
    n_tr = train_rows(n, split_mode(has_val, has_test))
    if not has_val and not has_test:
        n_va = n // 10
        cuts = {"train_file": [(n_tr, ("train",)), (n_tr + n_va, ("validation",))]}
        cuts["train_file"].append((inf, ("test",)))
        src = {
            "train": f"train_file valid rows 1-{n_tr} (80%)",
            "validation": f"train_file valid rows {n_tr + 1}-{n_tr + n_va} (10%)",
            "test": f"train_file valid rows {n_tr + n_va + 1}-{n} (10%)",
        }
        return "train", cuts, src
    if not has_val:
        cuts = {"train_file": [(n_tr, ("train",)), (inf, ("validation",))]}
        cuts["test_file"] = [(inf, ("test",))]
        src = {
            "train": f"train_file valid rows 1-{n_tr} (80%)",
            "validation": f"train_file valid rows {n_tr + 1}-{n} (last 20%)",
            "test": "test_file",
        }
        return "train+test", cuts, src
    cuts = {"train_file": [(inf, ("train",))]}
    src = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
    if not has_test:
        cuts["validation_file"] = [(inf, ("validation", "test"))]
        src["test"] = "validation_file (no test_file given)"
        return "train+validation", cuts, src
    cuts["validation_file"] = [(inf, ("validation",))]
    cuts["test_file"] = [(inf, ("test",))]
    return "train+validation+test", cuts, src


def split_mode(has_validation: bool, has_test: bool) -> str:
    """Which splits come from train_file: `train` (80/10/10), `train+test` (the last 20% is
    validation), `train+validation` or `train+validation+test` (all of it is train)."""
    if has_validation:
        return "train+validation+test" if has_test else "train+validation"
    return "train+test" if has_test else "train"


def train_rows(n: int, mode: str) -> int:
    """Of `n` valid rows of train_file, those the train split keeps in split `mode`."""
    return {"train": n * 8 // 10, "train+test": n - n // 5}.get(mode, n)


@dataclass
class DataCheck:
    """What `check_data_files` found: each file's report, and every problem with its fix."""

    reports: dict[str, ValidationReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def raise_if_any(self) -> None:
        """Raise every problem at once, if there is one.

        Raises:
            DatasetInvalid: listing every problem, each naming its file, with every fix.
        """
        if self.problems:
            raise DatasetInvalid(
                "the data cannot train: " + "; ".join(self.problems) + ".",
                fix=" ".join(dict.fromkeys(self.fixes)),
            )


def check_data_files(files: dict[str, Path | None]) -> DataCheck:
    """Check a job's data files before it is queued: one streamed pass over each (no
    tokenizer), so that what preprocess would refuse minutes later is refused now.

    A file is refused when it cannot be read, is empty, is not in its format (a .jsonl that
    is not JSON lines), or holds no valid conversation; train_file also when its valid rows
    leave fewer than `MIN_TRAIN_ROWS` for training after the split. Bad rows in a file that
    also has good ones are not refused: preprocess drops them and says so.

    Args:
        files: `train_file`, `validation_file`, `test_file` (None when not given).

    Returns:
        The reports and the problems (`raise_if_any` raises them all at once).
    """
    check = DataCheck()
    for name in DATA_FILES:
        path = files.get(name)
        if path is None:
            continue
        try:
            report = validate_file(path, max_listed=3)
        except DatasetError as exc:
            check.problems.append(f"`{name}`: {exc.message.rstrip('.')}")
            check.fixes.append(exc.fix or "")
            continue
        check.reports[name] = report
        if nothing := unusable(report):
            check.problems.append(f"`{name}` {path} {nothing.problem}")
            check.fixes.append(nothing.fix)
    train = check.reports.get("train_file")
    if train is None or train.valid == 0:
        return check
    mode = split_mode(files.get("validation_file") is not None, files.get("test_file") is not None)
    kept = train_rows(train.valid, mode)
    if kept < MIN_TRAIN_ROWS:
        need = next(
            n for n in range(kept, 2 * MIN_TRAIN_ROWS) if train_rows(n, mode) >= MIN_TRAIN_ROWS
        )
        check.problems.append(
            f"`train_file` {train.path} has {train.valid:,} valid rows ({train.invalid:,} bad): "
            f"{kept} are left for training{SPLIT_CUT.get(mode, '')}, at least "
            f"{MIN_TRAIN_ROWS} are needed"
        )
        check.fixes.append(
            f"add conversations to `train_file`: at least {need} valid rows with these files"
        )
    return check


def rows_hint(cfg: PreprocessConfig) -> int | None:
    """The lines of the data files when all are .jsonl (a quick count of newlines: an upper
    bound of the valid rows, known before the rows are read); None for other formats."""
    paths = list(cfg.inputs().values())
    if any(p.suffix.lower() != ".jsonl" for p in paths):
        return None
    lines = 0
    for path in paths:
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                lines += block.count(b"\n")
    return lines


def row_at(path: Path, line: int) -> Messages:
    """The messages of the valid row at `line` of `path` (read again, for an error message)."""
    return next(messages for at, messages in iter_valid(path) if at == line)


def iter_valid(path: Path) -> Iterator[tuple[int, Messages]]:
    """(line, messages) of each row of `path` that passes the conversation schema."""
    for checked in iter_checked(path):
        if checked.ok:
            assert checked.row is not None
            yield checked.line, checked.row["messages"]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _tokenizer_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    files = [p for p in model_dir.iterdir() if p.is_file() and _TOKENIZER_FILE.match(p.name)]
    extra = model_dir / "additional_chat_templates"
    if extra.is_dir():
        files += [p for p in extra.iterdir() if p.is_file()]
    return sorted(files)


def preprocess_cache_key(cfg: PreprocessConfig) -> str:
    """sha256 over what decides the output: data file contents (by parameter), tokenizer files
    (chat template included), the resolved `max_seq_length`, `seed` and the output format.

    Paths, `output_dir` and the model's weights do not enter it: moving or copying the same
    files gives the same key.
    """
    model_dir = Path(cfg.model_dir)
    max_len = cfg.max_seq_length
    if max_len == -1:
        max_len = model_context_length(model_dir) or -1
    payload = {
        "format_version": FORMAT_VERSION,
        "data": {name: _sha256_file(p) for name, p in cfg.inputs().items()},
        "tokenizer": {
            str(p.relative_to(model_dir)): _sha256_file(p) for p in _tokenizer_files(model_dir)
        },
        "params": {"max_seq_length": max_len, "seed": cfg.seed},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
