"""`chattune model ...`: the catalog, imports and versions (workflow step 2)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from chattune.cli.common import JsonOpt, WorkspaceOpt, console, open_workspace, print_json
from chattune.errors import ModelImportError
from chattune.models.importer import import_model
from chattune.models.store import get_model, list_models, with_tags

app = typer.Typer(no_args_is_help=True)


def _gib(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


@app.command("list")
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List every model version: built-in catalog cards and the workspace's imports."""
    ws = open_workspace(workspace)
    versions = list_models(ws)
    if as_json:
        print_json([v.to_dict() for v in versions])
        return
    table = Table(title=f"models in {ws.root}")
    for col in ("name", "version", "kind", "params", "context", "created", "path"):
        table.add_column(col)
    for v in versions:
        table.add_row(
            v.name,
            v.version,
            v.kind,
            _gib(v.card.num_parameters),
            str(v.card.context_length),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            str(v.path or "-"),
        )
    console.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Model name (chattune model list).")],
    version: Annotated[str | None, typer.Option(help="A version; exclusive with --label.")] = None,
    label: Annotated[
        str | None, typer.Option(help="'latest': the most recently created version.")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one model version: its card, sources, tags and compute allow lists."""
    ws = open_workspace(workspace)
    mv = with_tags(ws, get_model(ws, name, version=version, label=label))
    if as_json:
        print_json(mv.to_dict())
        return
    card = mv.card
    table = Table(show_header=False, title=f"{mv.name}:{mv.version}")
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "id": mv.id,
        "kind": mv.kind,
        "created": mv.created_at.isoformat(timespec="seconds"),
        "description": mv.description or card.description,
        "path": str(mv.path or "-"),
        "sources": mv.source or "-",
        "architecture": f"{card.architecture} ({card.config.model_type})",
        "parameters": f"{card.num_parameters:,}",
        "context length": f"{card.context_length:,}",
        "layers x hidden": f"{card.config.num_hidden_layers} x {card.config.hidden_size}",
        "LoRA target modules": ", ".join(card.lora_target_modules),
        "chat template": card.chat_template_source,
    }
    rows.update({f"tag {k}": v for k, v in mv.tags.items()})
    for k, v in rows.items():
        table.add_row(k, v)
    console.print(table)
    allowed = ast.literal_eval(mv.tags["finetune_compute_allow_list"])
    if not allowed:
        console.print(
            f"[yellow]{mv.name} fits no compute of this workspace for fine-tuning[/] "
            f"(see `chattune compute fit --model {mv.name}`)."
        )


@app.command("import")
def import_cmd(
    source: Annotated[
        str, typer.Argument(help="A built-in card name, hub id (org/name), HF folder or .gguf.")
    ],
    name: Annotated[str | None, typer.Option(help="Name in the workspace.")] = None,
    chat_template: Annotated[
        Path | None, typer.Option(help="Jinja chat template file to use instead of the source's.")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a model as a plain safetensors checkpoint with its tokenizer and chat template.

    Done once: importing the same source again reuses the checkpoint (hash-checked).
    """
    ws = open_workspace(workspace)
    template = None
    if chat_template is not None:
        if not chat_template.is_file():
            raise ModelImportError(
                f"chat template file {chat_template} does not exist.", fix="check the path."
            )
        template = chat_template.read_text()
    with console.status(f"importing {source}") as status:

        def log(msg: str) -> None:
            status.update(msg)
            console.log(msg)

        result = import_model(ws, source, name=name, chat_template=template, log=log)
    mv = result.model
    if as_json:
        print_json({**mv.to_dict(), "reused": result.reused})
        return
    verb = "reused" if result.reused else "imported"
    console.print(f"[green]{verb}[/] {mv.name}:{mv.version} -> {mv.path}")
