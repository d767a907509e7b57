"""Options and helpers shared by every CLI command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from chattune.workspace import Workspace

console = Console()
err_console = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace folder (default: $CHATTUNE_HOME, else ~/.chattune). Created if missing.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def open_workspace(path: Path | None) -> Workspace:
    return Workspace.open(path)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))
