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
from rich.cells import cell_len
from rich.console import Console, ConsoleRenderable, RenderHook
from rich.table import Table
from rich.text import Text

from chattune.workspace import Workspace


class WholeWords(RenderHook):
    """Widen each column of a printed table to its longest word (see the module docstring)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        for r in renderables:
            if isinstance(r, Table):
                self.widen(r)
        return renderables

    def widen(self, table: Table) -> None:
        for column in table.columns:
            if column.overflow == "fold":
                continue
            cells = [column.header, *column.cells]
            longest = max((self.longest_word(c) for c in cells), default=0)
            column.min_width = max(column.min_width or 0, longest)

    def longest_word(self, cell: object) -> int:
        if isinstance(cell, str):
            cell = self.console.render_str(cell)  # markup such as [bold] takes no room
        if not isinstance(cell, Text):
            return 0  # a nested renderable measures itself
        return max(map(cell_len, cell.plain.split()), default=0)


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


def open_workspace(path: Path | None) -> Workspace:
    return Workspace.open(path)


def print_json(data: Any) -> None:
    """Print `data` as indented JSON on stdout (dates, paths and the like as strings).

    Example:
        `if as_json: print_json([v.to_dict() for v in versions]); return`
    """
    console.print_json(json.dumps(data, default=str))
