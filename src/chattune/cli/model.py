"""`chattune model ...`: the catalog, imports and versions (workflow step 2)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from chattune.cli.common import (
    JsonOpt,
    WorkspaceOpt,
    console,
    err_console,
    list_table,
    open_workspace,
    print_json,
    progress,
)
from chattune.compute.allow import with_tags
from chattune.errors import InvalidParameter, ModelImportError
from chattune.models.importer import import_model
from chattune.models.store import ModelVersion, get_model, list_models
from chattune.registry import delete_model, register_model

app = typer.Typer(no_args_is_help=True)


def _gib(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


LabelOpt = Annotated[str | None, typer.Option(help="'latest': the most recently created version.")]


@app.command("list")
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List every model version: built-in catalog cards, imports and registered versions."""
    ws = open_workspace(workspace)
    versions = list_models(ws)
    if as_json:
        print_json([v.to_dict() for v in versions])
        return
    # 80 columns hold these: the path, a registered version's type (mlflow_model,
    # custom_model) and the creation time are in `model show` and --json
    table = list_table(
        f"models in {ws.root}", "name", "version", "kind", "params", "context", "created"
    )
    for v in versions:
        table.add_row(
            v.name,
            v.version,
            v.kind,
            _gib(v.card.num_parameters),
            str(v.card.context_length),
            v.created_at.strftime("%Y-%m-%d"),
        )
    console.print(table)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="Model name (chattune model list).")],
    version: Annotated[str | None, typer.Option(help="A version; exclusive with --label.")] = None,
    label: LabelOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one model version: its card, sources, tags, compute allow lists and, for a
    registered version, its lineage (job, base model, data files and hashes, metrics)."""
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
        "kind": mv.kind + (f" ({mv.type})" if mv.kind == "registered" else ""),
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
    for line in _lineage_lines(mv):  # long paths and hashes: plain lines, never wrapped
        console.print(line, highlight=False, markup=False, soft_wrap=True)
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
    with err_console.status(f"importing {source}") as status:  # progress: stderr

        def log(msg: str) -> None:
            status.update(msg)
            progress(msg)

        result = import_model(ws, source, name=name, chat_template=template, log=log)
    mv = result.model
    if as_json:
        print_json({**mv.to_dict(), "reused": result.reused})
        return
    verb = "reused" if result.reused else "imported"
    console.print(f"[green]{verb}[/] {mv.name}:{mv.version} -> {mv.path}")


def _lineage_lines(mv: ModelVersion) -> list[str]:
    """The lineage of a registered version, as `model show` prints it under the table."""
    lin = mv.lineage
    if not lin:
        return []
    if lin.get("source") != "job":
        return [f"lineage: registered from {lin.get('registered_from')}"]
    base = lin["base_model"]
    alias = f" (= {lin['job_output']})" if lin["job_output"] != lin["output"] else ""
    lines = [
        f"lineage: job {lin['job']}, output {lin['output']}{alias}, "
        f"experiment {lin['experiment']}, MLflow run {lin.get('mlflow_run_id') or '-'}",
        f"  base model: {base['name']}:{base['version']}",
    ]
    for split, d in lin["data"].items():
        rows = f" ({d['rows']} rows)" if "rows" in d else ""
        note = f" ({d['hashed']})" if "hashed" in d else ""
        lines.append(f"  data {split}: {d['path']}{rows} sha256 {d['sha256']}{note}")
    metrics = ", ".join(
        f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(lin["metrics"].items())
    )
    lines.append(f"  metrics: {metrics or 'none recorded'}")
    return lines


def _parse_tags(tags: list[str]) -> dict[str, str]:
    bad = [t for t in tags if "=" not in t or not t.partition("=")[0].strip()]
    if bad:
        raise InvalidParameter(
            f"--tag takes key=value, got {', '.join(map(repr, bad))}.",
            fix="write e.g. --tag dataset=chitchat --tag owner=me",
        )
    return {k.strip(): v.strip() for k, _, v in (t.partition("=") for t in tags)}


@app.command()
def register(
    name: Annotated[str, typer.Option(help="Model name (letters, digits, '.', '_', '-').")],
    path: Annotated[
        str,
        typer.Option(
            help="A model folder, or a job output: jobs/JOB/outputs/OUTPUT or "
            "azureml://jobs/JOB/outputs/OUTPUT (pytorch_model_folder, mlflow_model_folder, "
            "trained_model = mlflow_model_folder). Write ./jobs/... for a local folder."
        ),
    ],
    type_: Annotated[
        str,
        typer.Option(
            "--type", help="mlflow_model (a folder with MLmodel) or custom_model (HF folder)."
        ),
    ],
    version: Annotated[
        str | None,
        typer.Option(help="Any version string (e.g. a timestamp); default: the next number."),
    ] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="A tag key=value (repeatable).")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a model folder or a job's output as a new, immutable version with its lineage.

    A folder is copied into the workspace (cloned where the file system can) and left as it
    was; a job's outputs are hard-linked. The registered files are read-only.
    """
    ws = open_workspace(workspace)
    mv = register_model(
        ws,
        name=name,
        path=path,
        type=type_,
        version=version,
        description=description,
        tags=_parse_tags(tag or []),
        log=progress,  # on stderr, so that --json's stdout is JSON only
    )
    if as_json:
        print_json(mv.to_dict())
        return
    console.print(f"[green]registered[/] {mv.name}:{mv.version} ({mv.type}) -> {mv.path}")
    console.print(f"show it with: chattune model show {mv.name} --version {mv.version}")


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str | None, typer.Option(help="The version to delete.")] = None,
    label: LabelOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete an imported or registered version and its files. Refused while a deployment
    uses it, and for built-in catalog versions."""
    mv = delete_model(open_workspace(workspace), name, version, label=label, log=progress)
    removed = mv.path if mv.path and not mv.path.exists() else None  # else left: outside
    if as_json:
        print_json(
            {"deleted": f"{mv.name}:{mv.version}", "path": mv.path, "files_removed": bool(removed)}
        )
        return
    console.print(
        f"[green]deleted[/] {mv.name}:{mv.version}" + (f" ({removed})" if removed else "")
    )
