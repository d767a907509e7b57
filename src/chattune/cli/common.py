"""Options and helpers shared by every CLI command, and the one rule of how output looks.

The output rule: nothing the CLI prints is cut, so every name, id and path can be copied or
grepped from it, in a terminal of any width and in a pipe.

- Plain lines are written whole (`soft_wrap`): the terminal wraps them, a pipe gets them
  as they are.
- A table column is never narrower than its longest word (a word: text between spaces);
  its other text wraps at spaces. If the words of a row do not fit the terminal, the table
  is wider than the terminal: a wrapped line beats a cut name. A column declared with
  `overflow="fold"` holds free text (messages, error details): there long words fold.
  `WholeWords` applies this to every table printed on `console`, so commands build plain
  `rich.table.Table`s and print them with `console.print`.
- A list of records (`model list`, `endpoint list`, ...) is a `list_table`: no borders, two
  spaces between columns, as `docker ps` prints, so that a row fits 80 columns sooner and
  `grep`/`cut`/`awk` see plain columns.
- `--json` prints the same records as JSON on stdout and nothing else (`print_json`);
  progress and warnings go to stderr (`err_console`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, ConsoleRenderable, RenderHook
from rich.measure import Measurement
from rich.table import Table

from chattune.workspace import Workspace

FREE_TEXT_MIN = 12  # columns: the narrowest a free-text (overflow="fold") column gets


class WholeWords(RenderHook):
    """Fit each printed table to the terminal without cutting a word (see the module docstring).

    Rich narrows the widest column first and cuts what no longer fits with `…`; here each
    column gets a width between its longest word and its longest line, narrowing the widest
    columns that can still wrap until the table fits, and the table is wider than the
    terminal where even the longest words do not fit.
    """

    def __init__(self, console: Console) -> None:
        self.console = console

    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        for r in renderables:
            if isinstance(r, Table):
                self.fit(r)
        return renderables

    def fit(self, table: Table) -> None:
        wide = self.console.options.update_width(10**6)
        lows, highs = [], []
        for column in table.columns:
            low, high = 0, 0
            for cell in (column.header, *column.cells):
                m = Measurement.get(self.console, wide, cell)
                low, high = max(low, m.minimum), max(high, m.maximum)
            if column.overflow == "fold":
                low = min(high, FREE_TEXT_MIN)
            lows.append(max(low, column.min_width or 0))
            highs.append(max(high, lows[-1]))
        widths = list(highs)
        for column, width in zip(table.columns, widths, strict=True):
            column.width = width
        # borders and padding: what the table takes beyond its columns' text
        extra = Measurement.get(self.console, wide, table).maximum - sum(widths)
        room = self.console.width - extra
        while sum(widths) > room:
            narrowable = [i for i, w in enumerate(widths) if w > lows[i]]
            if not narrowable:
                break  # wider than the terminal: a wrapped line beats a cut word
            widths[max(narrowable, key=widths.__getitem__)] -= 1
        for column, width in zip(table.columns, widths, strict=True):
            column.width = width
        if sum(widths) > room:
            table.width = sum(widths) + extra  # else rich narrows the columns again


console = Console(soft_wrap=True)
console.push_render_hook(WholeWords(console))
err_console = Console(stderr=True, soft_wrap=True)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace folder (default: $CHATTUNE_HOME, else ~/.chattune). Created if missing.",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the records as JSON on stdout, and nothing else.")
]


def list_table(title: str | None, *headers: str) -> Table:
    """A table of records, one per row, with these column headers (see the module docstring).

    Example:
        `table = list_table(f"models in {ws.root}", "name", "version")`
    """
    return Table(*headers, title=title, box=None, pad_edge=False, title_justify="left")


def progress(message: str) -> None:
    """One progress line on stderr, whole (never folded, so a path in it can be copied)."""
    err_console.print(message, markup=False, highlight=False)


def open_workspace(path: Path | None) -> Workspace:
    return Workspace.open(path)


def print_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout (dates, paths and the like as strings).

    Example:
        `if as_json: print_json([v.to_dict() for v in versions]); return`
    """
    console.print_json(json.dumps(data, default=str))
