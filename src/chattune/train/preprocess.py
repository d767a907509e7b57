"""The preprocess step: conversation files in, tokenized splits with assistant-only labels out.

    train_file [validation_file] [test_file] + model_dir (tokenizer with a chat template)
      -> output_dir/{train,validation,test}.parquet, test_messages.jsonl, report.json

Only `messages` is used (rows in ShareGPT or Alpaca form are converted first, by
`chattune.data`). Splits keep file order and are cut contiguously, as in Azure:

| files given                | train       | validation         | test                     |
| -------------------------- | ----------- | ------------------ | ------------------------ |
| train                      | first 80%   | next 10%           | last 10%                 |
| train + test               | first 80%   | last 20% of train  | test_file                |
| train + validation         | train_file  | validation_file    | validation_file (logged) |
| train + validation + test  | as given    | as given           | as given                 |

Percentages are of the rows that pass the schema. Rows that break the conversation schema
(`chattune.data.schema`) and rows that lose every assistant token to truncation are dropped
and reported by reason, with file and line (Azure drops them silently).

Labels are -100 except on assistant messages: their content and the end-of-turn token(s) the
template writes after it (`<|im_end|>`, `<|end|>`, `<|eot_id|>`), so the model learns to stop.
`ChatEncoder` says how the spans are found.

With `workers` >= 2 (the default "auto": one per CPU from 3 CPUs on) and at least
`pool_min_rows` valid rows, the rendering, tokenizing and labelling run in worker processes
(`preprocess_pool`), started in the background while this process loads the tokenizer and
checks the rows; the files
written are byte-identical to a one-process run. The module that starts the step must be
importable without side effects (the `if __name__ == "__main__":` idiom), as for any
multiprocessing program that does not fork.

Example:
    >>> cfg = PreprocessConfig(train_file="d/train_sft.jsonl", test_file="d/test_sft.jsonl",
    ...                        model_dir="models/smol", max_seq_length=-1, output_dir="out")
    >>> report = run_preprocess(cfg, print)  # logs reads, drops, splits, outputs
    >>> report.metrics()["train_rows"], report.dropped.keys()
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chattune.data.validate import iter_checked
from chattune.errors import DatasetInvalid
from chattune.models.loading import load_tokenizer
from chattune.train.chat_encoder import (  # noqa: F401  (IGNORE_INDEX, Encoded: re-exported)
    _PREFIX_CHARS_PER_TOKEN,
    IGNORE_INDEX,
    ChatEncoder,
    ChatTemplateFailed,
    Encoded,
    Messages,
    TemplateRenderError,
)
from chattune.train.preprocess_inputs import (
    MIN_TRAIN_ROWS,
    SPLIT_CUT,
    check_inputs,
    iter_valid,
    model_context_length,
    plan_splits,
    preprocess_cache_key,
    resolve_max_len,
    row_at,
    rows_hint,
)
from chattune.train.preprocess_output import SPLITS, Outputs
from chattune.train.preprocess_pool import (
    POOL_MIN_ROWS,
    EncodedChunk,
    EncoderPool,
    WorkerFailed,  # noqa: F401  (re-exported: run_preprocess raises it)
    encode_chunks,
    warm_up,
)
from chattune.train.preprocess_report import (  # noqa: F401  (re-exported)
    DROP_NO_LABELS,
    DROP_TRUNCATED,
    FORMAT_VERSION,
    DroppedExample,
    DroppedRows,
    Drops,
    PreprocessReport,
    SplitStats,
    reason_slug,
)
from chattune.workspace.files import write_json_atomic

Log = Callable[[str], None]

# With 2 CPUs the one-process path already keeps about 1.5 of them busy (the tokenizer runs in
# a thread pool beside the Python work) and the workers measured no faster (bench/README.md,
# T3): 'auto' starts workers only from 3 CPUs on, where one process cannot use the rest.
AUTO_MIN_CPUS = 3
_CHUNK = 1024  # conversations rendered and tokenized per batch (a worker's unit of work)
_LOG_EVERY = 20_000  # conversations between progress lines


class PreprocessConfig(BaseModel):
    """What the preprocess step reads and writes, and how many processes do the work.

    `workers` and `pool_min_rows` change only the speed: the outputs are byte-identical for
    any value, and neither enters the cache key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_file: Path = Field(description="Conversations to train on (.jsonl/.json/.csv/.parquet).")
    validation_file: Path | None = Field(None, description="None: cut from train_file.")
    test_file: Path | None = Field(None, description="None: cut from train_file (or = validation).")
    model_dir: Path = Field(description="HF model folder: tokenizer, chat template, config.json.")
    max_seq_length: int = Field(-1, description="Tokens kept per conversation; -1 = model context.")
    output_dir: Path = Field(description="Where the splits and report.json are written.")
    seed: int = Field(42, description="Recorded in the cache key; the cuts are contiguous.")
    workers: int | Literal["auto"] = Field(
        "auto",
        description="Worker processes that render, tokenize and label: 'auto' = one per CPU "
        "this process may run on from 3 CPUs on, else 1; 1 = all in this process.",
    )
    pool_min_rows: int = Field(
        POOL_MIN_ROWS,
        ge=0,
        description="With fewer valid rows than this, stay in this process (a pool of "
        "workers costs about a second to start).",
    )

    @field_validator("max_seq_length")
    @classmethod
    def _positive_or_model(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError("must be -1 (the model's context length) or a number of tokens >= 1")
        return v

    @field_validator("workers")
    @classmethod
    def _auto_or_positive(cls, v: int | str) -> int | str:
        if v != "auto" and (not isinstance(v, int) or v < 1):
            raise ValueError("must be 'auto' (one per CPU) or a number of processes >= 1")
        return v

    def inputs(self) -> dict[str, Path]:
        """The data files given, by parameter name (`train_file`, ...)."""
        files = {"train_file": self.train_file, "validation_file": self.validation_file}
        files["test_file"] = self.test_file
        return {k: Path(v) for k, v in files.items() if v is not None}

    def worker_count(self) -> int:
        """`workers` resolved: 'auto' is one per CPU this process may run on from
        `AUTO_MIN_CPUS` CPUs on, and 1 (this process) below."""
        if self.workers != "auto":
            return int(self.workers)
        try:
            cpus = len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # no affinity on this platform
            cpus = os.cpu_count() or 1
        return cpus if cpus >= AUTO_MIN_CPUS else 1


class TooFewTrainingRows(DatasetInvalid):
    """Fewer than `MIN_TRAIN_ROWS` training conversations are left."""


class NoAssistantTokens(DatasetInvalid):
    """No training conversation keeps an assistant token after truncation."""


# A row on its way: (splits it goes to, line in its file, messages).
# The messages are kept only for the test split (test_messages.jsonl): the conversations go to
# the encoder, and a long batch of them held once more would be most of this process's memory.
_Item = tuple[tuple[str, ...], int, Messages | None]


# -- the step -------------------------------------------------------------------------------------
def run_preprocess(cfg: PreprocessConfig, log: Log = print) -> PreprocessReport:
    """Tokenize the conversations of `cfg` into train/validation/test splits.

    Args:
        cfg: the data files, model folder, `max_seq_length` and output folder.
        log: called with one line per event (reads, drops with examples, splits, outputs).

    Returns:
        The `PreprocessReport`, also written last to `output_dir/report.json`.

    Raises:
        InvalidParameter: a file or folder is missing, or `max_seq_length` cannot be resolved.
        TooFewTrainingRows: fewer than 10 training rows left (after drops and truncation).
        ChatTemplateFailed: the chat template fails to render a row (naming file and line).
        NoAssistantTokens: no training row keeps an assistant token after truncation.
        WorkerFailed: a worker process died (killed, out of memory).
    """
    t0 = time.perf_counter()
    check_inputs(cfg)
    max_len = resolve_max_len(cfg)
    context = model_context_length(cfg.model_dir)
    if context is not None and max_len > context:
        log(f"warning: max_seq_length {max_len} exceeds the model's context of {context} tokens")
    # worker processes start in the background when the files hold enough rows, while this
    # process loads the tokenizer and checks the rows; small inputs never start them
    workers = cfg.worker_count()
    hint = rows_hint(cfg) if workers > 1 else None
    early = hint is not None and hint >= cfg.pool_min_rows
    if early:
        warm_up()
    # the chat template is checked by the encoder, which names the step's fix
    encoder = ChatEncoder(load_tokenizer(cfg.model_dir, chat_template=False))
    how = "template pattern learned" if encoder.pattern else "exact per-turn rendering"
    log(f"tokenizer of {cfg.model_dir} ({how}); max_seq_length {max_len}")
    pool = EncoderPool(encoder, workers).start() if early else None
    try:
        return _run(cfg, log, t0, max_len, encoder, workers, pool)
    finally:
        if pool is not None:
            pool.close()


def _run(
    cfg: PreprocessConfig,
    log: Log,
    t0: float,
    max_len: int,
    encoder: ChatEncoder,
    workers: int,
    pool: EncoderPool | None,
) -> PreprocessReport:
    """`run_preprocess` from pass 1 on; `pool` (started, or None) is closed by the caller."""

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # its presence must mean "complete"

    # pass 1: schema check, counts and drops (the cuts need the number of valid rows)
    drops, rows_read, valid = Drops(), {}, {}
    for name, path in cfg.inputs().items():
        rows_read[name] = valid[name] = 0
        for checked in iter_checked(path):
            rows_read[name] += 1
            if checked.problem is None:
                valid[name] += 1
            else:
                p = checked.problem
                drops.add(p.reason, path, checked.line, p.detail)
        log(f"read {path}: {rows_read[name]} rows, {valid[name]} valid")
    _log_drops(drops, log)
    mode, cuts, sources = plan_splits(cfg, valid)
    splits = {s: SplitStats(sources[s]) for s in SPLITS}
    for name, file_cuts in cuts.items():
        lo = 0
        for end, names in file_cuts:
            for s in names:
                splits[s].rows_in += int(min(end, valid[name]) - lo)
            lo = int(min(end, valid[name]))
    for s in SPLITS:
        log(f"{s}: {splits[s].rows_in} rows from {splits[s].source}")
    if mode == "train+validation":
        log("no test_file given: the test split is the validation set")
    if splits["train"].rows_in < MIN_TRAIN_ROWS:
        _too_few(cfg, splits["train"].rows_in, rows_read, drops, mode)

    # pass 2: render, tokenize, label, truncate (in worker processes for many rows), write
    def batches() -> Iterator[tuple[tuple[Path, list[_Item]], list[Messages]]]:
        for name, path in cfg.inputs().items():
            items: list[_Item] = []
            convs: list[Messages] = []
            for idx, (line, messages) in enumerate(iter_valid(path)):
                names = next(n for end, n in cuts[name] if idx < end)
                items.append((names, line, messages if "test" in names else None))
                convs.append(messages)
                if len(items) == _CHUNK:
                    yield (path, items), convs
                    items, convs = [], []
            if items:
                yield (path, items), convs

    if workers > 1 and sum(valid.values()) >= cfg.pool_min_rows:
        pool = pool or EncoderPool(encoder, workers).start()
    elif pool is not None:  # fewer valid rows than the lines promised
        pool.close()
        pool = None
    log(f"encoding in {f'{workers} worker processes' if pool else 'this process'}")
    outputs = Outputs(out)
    first_labels: list[int] = []  # per train row: tokens needed to keep one assistant token
    done, every, exact, prefix = 0, _LOG_EVERY, 0, 0
    try:
        try:
            with closing(encode_chunks(encoder, batches(), max_len, pool)) as chunks:
                for (path, items), chunk in chunks:
                    _write_batch(path, items, chunk, max_len, splits, drops, outputs, first_labels)
                    done += len(items)
                    exact, prefix = exact + chunk.exact, prefix + chunk.prefix
                if done >= every:
                    every += _LOG_EVERY
                    rate = done / (time.perf_counter() - t0)
                    log(f"tokenized {done} conversations ({rate:.0f}/s)")
        except TemplateRenderError as exc:
            path, items = exc.payload
            _, line, _ = items[exc.index]
            messages = row_at(path, line)
            row = json.dumps(messages, ensure_ascii=False)
            raise ChatTemplateFailed(
                f"The chat template fails on {path}, line {line}: {exc}. "
                f"Roles of the row: {', '.join(m['role'] for m in messages)}; the row: "
                f"{row[:200]}{'...' if len(row) > 200 else ''}",
                fix="import the model with a chat template that renders such conversations: "
                "`chattune model import SOURCE --chat-template FILE`",
            ) from exc.error
        train = splits["train"]
        if train.rows_in and not train.rows_out:
            _nothing_to_learn(max_len, first_labels, train.rows_in)
        if train.rows_out < MIN_TRAIN_ROWS:
            _too_few(cfg, train.rows_out, rows_read, drops, mode)
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise
    finally:
        if pool is not None:  # closing twice is harmless: the caller closes an early one
            pool.close()
    if exact:
        log(f"{exact} conversations labelled by exact per-turn rendering")
    if prefix:
        log(
            f"{prefix} long conversations tokenized up to the first "
            f"{encoder.boundary} past {max_len * _PREFIX_CHARS_PER_TOKEN} characters"
        )

    _log_drops(drops, log)
    report = PreprocessReport(
        max_seq_length=max_len,
        split_mode=mode,
        rows_read=rows_read,
        splits=splits,
        dropped=drops.by_slug,
        cache_key=preprocess_cache_key(cfg),
        seconds=round(time.perf_counter() - t0, 3),
    )
    for s, st in splits.items():
        log(
            f"{s}: {st.rows_out} rows, {st.tokens} tokens, {st.label_tokens} label tokens, "
            f"{st.truncated} truncated to {max_len}"
        )
    write_json_atomic(out / "report.json", report.to_dict())
    log(f"wrote {out} in {report.seconds:.1f}s")
    return report


def _write_batch(
    path: Path,
    items: list[_Item],
    chunk: EncodedChunk,
    max_len: int,
    splits: dict[str, SplitStats],
    drops: Drops,
    outputs: Outputs,
    first_labels: list[int],
) -> None:
    offsets = chunk.offsets.tolist()
    rows = zip(
        items,
        chunk.tokens.tolist(),
        chunk.first_label.tolist(),
        chunk.label_tokens.tolist(),
        strict=True,
    )
    for i, ((names, line, messages), n, first, n_labels) in enumerate(rows):
        if "train" in names and first >= 0:
            first_labels.append(first + 1)
        if not n_labels:
            if first < 0:
                drops.add(DROP_NO_LABELS, path, line, f"{n} tokens, none from the assistant")
            else:
                drops.add(
                    DROP_TRUNCATED, path, line, f"{n} tokens, first assistant token at {first + 1}"
                )
            continue
        a, b = offsets[i], offsets[i + 1]
        ids, labels = chunk.ids[a:b], chunk.labels[a:b]
        for s in names:
            st = splits[s]
            st.rows_out += 1
            st.tokens += b - a
            st.label_tokens += n_labels
            st.truncated += n > max_len
            outputs.add(s, ids, labels, n_labels, line)
            if s == "test":
                assert messages is not None  # kept for test rows
                outputs.add_test_messages(messages, path, line)
    outputs.flush()


def _log_drops(drops: Drops, log: Log) -> None:
    for d in drops.by_slug.values():
        where = ", ".join(f"{e.file}:{e.line} ({e.detail})" for e in d.examples)
        log(f"dropped {d.count} rows: {d.reason}; first: {where}")


def _too_few(
    cfg: PreprocessConfig, kept: int, rows_read: dict[str, int], drops: Drops, mode: str
) -> None:
    cut = SPLIT_CUT.get(mode, "")
    fix = (
        f"add conversations to `train_file` ({cfg.train_file}), or run "
        f"`chattune data validate {cfg.train_file}` to see why rows are dropped"
    )
    if reason_slug(DROP_TRUNCATED) in drops.by_slug:
        fix += ", or raise `max_seq_length`"
    raise TooFewTrainingRows(
        f"Only {kept} training rows remain{cut}, at least {MIN_TRAIN_ROWS} are needed: "
        f"{sum(rows_read.values())} rows read, {drops.total()} dropped "
        f"({drops.summary()}).",
        fix=fix,
    )


def _nothing_to_learn(max_len: int, first_labels: list[int], rows: int) -> None:
    if not first_labels:
        raise NoAssistantTokens(
            f"The chat template wrote no assistant tokens in any of the {rows} training rows.",
            fix="import the model with a chat template that renders assistant messages: "
            "`chattune model import SOURCE --chat-template FILE`",
        )
    first_labels.sort()
    ten = first_labels[min(MIN_TRAIN_ROWS, len(first_labels)) - 1]
    raise NoAssistantTokens(
        f"No training row keeps an assistant token within max_seq_length={max_len}: "
        f"all {rows} rows were dropped (the shortest prompt before a reply is "
        f"{first_labels[0] - 1} tokens).",
        fix=f"raise `max_seq_length` to at least {first_labels[0]} "
        f"({ten} keeps {MIN_TRAIN_ROWS} rows), or shorten the system prompts",
    )
