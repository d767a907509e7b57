"""`chattune data ...`: download, validate and inspect chat datasets.

The commands are thin: the work is in `chattune.data`; errors are `ChattuneError`s that
`chattune.cli.main` prints with their fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from chattune.cli.common import (
    JsonOpt,
    WorkspaceOpt,
    console,
    err_console,
    open_workspace,
    print_json,
)
from chattune.data.download import DownloadResult, check_split_pc, download_dataset
from chattune.data.readers import count_records
from chattune.data.stats import DatasetStats, PreviewRow, dataset_stats
from chattune.data.validate import ValidationReport, unusable, validate_file
from chattune.errors import DatasetInvalid, InvalidParameter

app = typer.Typer(no_args_is_help=True, help="Download, validate and inspect chat datasets.")

_ROLE_LETTERS = {"system": "S", "user": "U", "assistant": "A"}


def _progress(disable: bool = False) -> Progress:
    """A progress bar on stderr, so that stdout holds only the results (and --json)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=disable,
    )


@app.command()
def download(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            help="Hub id (HuggingFaceH4/ultrachat_200k), `chitchat` (offline corpus), or a "
            "local .jsonl/.json/.csv/.parquet file or folder (one split per file).",
        ),
    ],
    download_dir: Annotated[
        Path | None,
        typer.Option(
            "--download-dir",
            help="Output folder for <split>.jsonl files (default: <workspace>/datasets/<dataset>).",
            show_default=False,
        ),
    ] = None,
    split_pc: Annotated[
        str,  # parsed by check_split_pc, so that a bad value gets our message and fix
        typer.Option("--split-pc", help="Percent of each split to keep, from its start, (0, 100]."),
    ] = "100",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the first P% of every split as <download-dir>/<split>.jsonl (ultrachat schema)."""
    pc = check_split_pc(split_pc)  # before the workspace or the source is touched
    if download_dir is None:
        local = Path(dataset)
        name = (local.stem if local.is_file() else local.name) if local.exists() else dataset
        slug = re.sub(r"[^A-Za-z0-9._-]+", "__", name).strip("._") or "dataset"  # never `..`
        ws = open_workspace(workspace)
        download_dir = ws.inside(ws.datasets_dir / slug, under=ws.datasets_dir)
    tasks: dict[str, TaskID] = {}
    with _progress(as_json) as bar:

        def report(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(split, total=total)
            bar.update(tasks[split], completed=done, total=total)

        result = download_dataset(dataset, download_dir, pc, progress=report)
    if as_json:
        print_json(result.to_dict())
        return
    _print_download(result)


def _print_download(result: DownloadResult) -> None:
    table = Table(
        title=f"{result.dataset}: first {result.split_pc:g}% of each split",
        caption=f"written to {result.download_dir}",
    )
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("split rows", justify="right")
    table.add_column("dropped", justify="right")
    table.add_column("schema-invalid", justify="right")
    table.add_column("file")
    for s in result.splits:
        table.add_row(
            s.name,
            f"{s.rows:,}",
            f"{s.source_rows:,}",
            f"{sum(s.dropped.values()):,}",
            f"{s.schema_invalid:,}",
            s.path.name,
        )
    console.print(table)
    for s in result.splits:
        for reason, count in s.dropped.most_common():
            console.print(f"{s.name}: dropped {count:,} rows: {reason}", highlight=False)
        if s.schema_invalid:
            console.print(
                f"{s.name}: {s.schema_invalid:,} rows break the schema; "
                f"see `chattune data validate {s.path}`",
                highlight=False,
            )
    for note, count in result.notes.most_common():
        console.print(f"{result.source}: {note}: {count:,}", highlight=False)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="A .jsonl, .json, .csv or .parquet file.")],
    max_listed: Annotated[
        int, typer.Option("--max-listed", min=0, help="Bad rows to list (all are counted).")
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Check every row against the conversation schema; exit code 1 if any row is bad, or if
    the file holds nothing to train on (empty, unreadable, no valid conversation)."""
    total = _cheap_count(file)
    with _progress(as_json) as bar:
        task = bar.add_task("validate", total=total)
        report = validate_file(
            file, max_listed=max_listed, progress=lambda n: bar.update(task, completed=n)
        )
        bar.update(task, total=report.total, completed=report.total)
    if as_json:
        print_json(report.to_dict())
    else:
        _print_validation(report)
    # through the error channel: DatasetInvalid exits with code 1
    if nothing := unusable(report):
        raise DatasetInvalid(f"{file} {nothing.problem}.", fix=nothing.fix)
    if not report.ok:
        raise DatasetInvalid(
            f"{report.invalid:,} of {report.total:,} rows of {file} break the conversation "
            "schema (listed above).",
            fix="fix or remove those rows; left in, the fine-tuning job drops them and says why",
        )


def _cheap_count(file: Path) -> int | None:
    # A progress total only where counting costs no parsing (JSON lines, parquet).
    if file.suffix.lower() in (".jsonl", ".parquet") and file.is_file():
        return count_records(file)
    return None


def _print_validation(report: ValidationReport) -> None:
    if report.bad:
        table = Table(title=f"Bad rows of {report.path}")
        table.add_column("line", justify="right")
        table.add_column("format")
        table.add_column("reason")
        table.add_column("detail", overflow="fold")
        for b in report.bad:
            assert b.problem is not None
            table.add_row(str(b.line), b.format or "-", b.problem.reason, b.problem.detail)
        console.print(table)
        more = report.invalid - len(report.bad)
        if more > 0:
            console.print(f"... and {more:,} more bad rows", highlight=False)
        counts = Table(title="Bad rows by reason")
        counts.add_column("reason")
        counts.add_column("rows", justify="right")
        for reason, count in report.reasons.most_common():
            counts.add_row(reason, f"{count:,}")
        console.print(counts)
    formats = ", ".join(f"{f} {c:,}" for f, c in report.formats.most_common()) or "none"
    console.print(
        f"{report.path}: {report.total:,} rows, {report.valid:,} valid, "
        f"{report.invalid:,} invalid (formats: {formats})",
        highlight=False,
    )
    if report.ok:
        console.print("[green]all rows valid[/]")


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="A .jsonl, .json, .csv or .parquet file.")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model name in the workspace or HF model folder: adds token-length "
            "statistics of each row rendered with its chat template.",
        ),
    ] = None,
    rows: Annotated[int, typer.Option("--rows", min=0, help="First rows to list.")] = 5,
    context: Annotated[
        int | None,
        typer.Option(
            "--context", min=1, help="Context length to compare with (default: the model's)."
        ),
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Preview the first rows and print row, turn and (with --model) token statistics."""
    tokenizer = _load_tokenizer(model, workspace) if model else None
    stats = dataset_stats(file, preview_rows=rows, tokenizer=tokenizer, context=context)
    if as_json:
        print_json(stats.to_dict())
        return
    _print_stats(stats, model)


def _load_tokenizer(model: str, workspace: Path | None) -> Any:
    """A tokenizer with a chat template, by HF folder path or workspace model name."""
    path = Path(model).expanduser()
    try:
        from chattune.models.store import load_tokenizer
    except ImportError:  # no model store in this build: `model` must be a folder
        load_tokenizer = None
    if load_tokenizer is not None and not path.is_dir():
        # a name: resolved in the workspace (opened only here, not for a plain folder)
        tokenizer = load_tokenizer(open_workspace(workspace), model)
    else:
        if not path.is_dir():
            raise InvalidParameter(
                f"--model {model}: no such model folder.",
                fix="give the folder of a Hugging Face model (with tokenizer files)",
            )
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # transformers raises OSError, ValueError, ... here
            raise InvalidParameter(
                f"--model {model}: the tokenizer cannot be loaded: {exc}",
                fix="give a folder with tokenizer.json or tokenizer_config.json",
            ) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidParameter(
            f"--model {model}: its tokenizer has no chat template, so rows cannot be rendered.",
            fix="pick an instruct/chat model, or add `chat_template` to tokenizer_config.json",
        )
    return tokenizer


def _roles(row: PreviewRow) -> str:
    letters = " ".join(_ROLE_LETTERS.get(r, "?") for r in row.roles)
    return letters if len(letters) <= 23 else f"{letters[:20]}… ({len(row.roles)})"


def _print_stats(stats: DatasetStats, model: str | None) -> None:
    table = Table(title=f"First {len(stats.preview)} rows of {stats.path}")
    table.add_column("line", justify="right")
    table.add_column("roles")
    table.add_column("first user message", overflow="fold")
    table.add_column("last assistant message", overflow="fold")
    for p in stats.preview:
        if p.problem:
            table.add_row(str(p.line), _roles(p), f"[red]invalid: {p.problem}[/]", "")
        else:
            table.add_row(str(p.line), _roles(p), p.first_user, p.last_assistant)
    console.print(table)
    formats = ", ".join(f"{f} {c:,}" for f, c in stats.formats.most_common()) or "none"
    console.print(
        f"rows: {stats.rows:,} ({stats.valid:,} valid, {stats.invalid:,} invalid); "
        f"formats: {formats}",
        highlight=False,
    )
    if stats.invalid:
        console.print(f"invalid rows are left out below; see `chattune data validate {stats.path}`")
    if stats.valid:
        console.print(
            f"turns per row: min {stats.turns_min}, mean {stats.turns_mean:.1f}, "
            f"max {stats.turns_max}",
            highlight=False,
        )
    t = stats.tokens
    if t is None:
        return
    tokens = Table(title=f"Tokens per row with the chat template of {model}")
    for col in ("rows", "min", "mean", "p50", "p90", "p99", "max", "context", "over context"):
        tokens.add_column(col, justify="right")
    tokens.add_row(
        f"{t.count:,}",
        f"{t.min:,}",
        f"{t.mean:,.1f}",
        f"{t.p50:,.0f}",
        f"{t.p90:,.0f}",
        f"{t.p99:,.0f}",
        f"{t.max:,}",
        f"{t.context:,}" if t.context else "unknown",
        f"{t.over_context:,}" if t.context else "-",
    )
    console.print(tokens)
    if t.template_errors:
        console.print(
            f"[yellow]{t.template_errors:,} rows could not be rendered by the chat template[/]"
        )
