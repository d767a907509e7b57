"""`chattune job ...`: the fine-tuning pipeline as a detached, streamable job (step 5)."""

from __future__ import annotations

import textwrap
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from chattune.cli.common import JsonOpt, WorkspaceOpt, console, open_workspace, print_json
from chattune.errors import InvalidParameter
from chattune.jobs.nodes import join as join_job
from chattune.jobs.service import cancel_job, resume_job, submit_job
from chattune.jobs.spec import load_job_yaml
from chattune.jobs.store import get_job, list_jobs
from chattune.jobs.stream import stream_job, summary_lines
from chattune.train.params import param_docs

app = typer.Typer(no_args_is_help=True)


def _parse_sets(sets: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    bad = [s for s in sets if "=" not in s]
    if bad:
        raise InvalidParameter(
            f"--set takes key=value, got {', '.join(map(repr, bad))}.",
            fix="write e.g. --set learning_rate=2e-4 --set apply_lora=true",
        )
    for s in sets:
        k, _, v = s.partition("=")
        out[k.strip()] = v.strip()
    return out


def _follow(ws, name: str) -> int:
    try:
        job = stream_job(ws, name, console=console)
    except KeyboardInterrupt:
        console.print(f"\nstopped streaming; the job goes on (chattune job stream {name}).")
        return 130
    for line in summary_lines(job):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0 if job.status == "Completed" else 1


@app.command()
def create(
    model: Annotated[str | None, typer.Option(help="Model NAME[:VERSION] or folder.")] = None,
    train_file: Annotated[Path | None, typer.Option(help="Training data (jsonl).")] = None,
    validation_file: Annotated[Path | None, typer.Option(help="Validation data.")] = None,
    test_file: Annotated[Path | None, typer.Option(help="Test data.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Pipeline parameter key=value (repeatable); `chattune job params` lists them.",
        ),
    ] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment.")] = None,
    name: Annotated[str | None, typer.Option(help="Job name (generated if omitted).")] = None,
    compute: Annotated[str | None, typer.Option(help="Compute to run on.")] = None,
    file: Annotated[Path | None, typer.Option("-f", "--file", help="A job YAML file.")] = None,
    force_rerun: Annotated[bool, typer.Option(help="Ignore cached step outputs.")] = False,
    continue_on_step_failure: Annotated[bool, typer.Option()] = False,
    model_defaults: Annotated[
        bool, typer.Option(help="Apply the model's model_specific_defaults over --set values.")
    ] = True,
    stream: Annotated[bool, typer.Option(help="Follow the job's log until it ends.")] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a fine-tuning job of the chat_completion pipeline; it runs detached.

    Pipeline parameters go in --set key=value or under `parameters:` in a job file;
    `chattune job params` lists each with its type, default and meaning.
    """
    ws = open_workspace(workspace)
    data: dict[str, Any] = load_job_yaml(file) if file else {}
    cli = {
        "model": model,
        "train_file": train_file,
        "validation_file": validation_file,
        "test_file": test_file,
        "experiment_name": experiment,
        "name": name,
        "compute": compute,
    }
    data.update({k: str(v) for k, v in cli.items() if v is not None})
    data["parameters"] = {**data.get("parameters", {}), **_parse_sets(set_ or [])}
    if force_rerun:
        data["force_rerun"] = True
    if continue_on_step_failure:
        data["continue_on_step_failure"] = True
    missing = [f"--{k.replace('_', '-')}" for k in ("model", "train_file") if k not in data]
    if missing:
        raise InvalidParameter(
            f"job create needs {' and '.join(missing)}.",
            fix="pass them, or a job file with -f job.yaml.",
        )
    # the data files are read once before queuing: seconds for 200k rows
    checking = nullcontext() if as_json else console.status("checking the job and its data")
    with checking:
        job, applied = submit_job(ws, data, apply_model_defaults=model_defaults)
    if as_json:
        print_json(job.to_dict())
    else:
        if applied:
            console.print(
                f"[yellow]Model specific defaults of {job.spec.model} override: {applied}[/]"
            )
        console.print(f"parameters: {job.spec.parameters}", highlight=False)
        console.print(f"[green]created job[/] {job.name} (experiment {job.experiment})")
        console.print(f"follow it with: chattune job stream {job.name}")
    if stream:
        raise typer.Exit(_follow(ws, job.name))


@app.command()
def params(as_json: JsonOpt = False) -> None:
    """List the pipeline parameters: name, type, default and meaning.

    Set them with `job create --set name=value` or under `parameters:` in a job file; flags
    take true/false. "chattune:" marks parameters Azure's component does not have.
    """
    docs = param_docs()
    if as_json:
        print_json([asdict(d) for d in docs])
        return
    width = max(console.width, 40) - 4
    for d in docs:
        heading = f"{d.name} ({d.type}, default {d.default})"
        console.print(heading, highlight=False, markup=False, soft_wrap=True)
        for line in textwrap.wrap(d.description, width):
            console.print(f"    {line}", highlight=False, markup=False)


@app.command()
def stream(name: str, workspace: WorkspaceOpt = None) -> None:
    """Print the job's log live, with a progress bar, then a summary.

    Exit code 0 if the job completed, 1 otherwise. Ctrl-C stops streaming, not the job.
    """
    raise typer.Exit(_follow(open_workspace(workspace), name))


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@app.command()
def show(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Show a job: status, steps, parameters, final metrics and outputs."""
    job = get_job(open_workspace(workspace), name)
    if as_json:
        print_json(job.to_dict())
        return
    for line in summary_lines(job):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"model: {job.spec.model}  experiment: {job.experiment}  created: {_when(job.created_at)}",
        highlight=False,
    )
    console.print(f"mlflow run: {job.mlflow_run_id or '-'}", highlight=False)


@app.command("list")
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List the workspace's jobs, oldest first."""
    jobs = list_jobs(open_workspace(workspace))
    if as_json:
        print_json([j.to_dict() for j in jobs])
        return
    table = Table()
    for col in ("name", "status", "model", "experiment", "created", "train_loss", "eval_loss"):
        table.add_column(col)
    for j in jobs:
        table.add_row(
            j.name,
            j.status,
            j.spec.model,
            j.experiment,
            _when(j.created_at),
            f"{j.metrics['train_loss']:.4f}" if "train_loss" in j.metrics else "-",
            f"{j.metrics['eval_loss']:.4f}" if "eval_loss" in j.metrics else "-",
        )
    console.print(table)


@app.command()
def cancel(name: str, workspace: WorkspaceOpt = None) -> None:
    """Cancel a job: finetune saves a checkpoint first, so `job resume` loses nothing.

    A job that already ended is left as it is (exit code 0).
    """
    ws = open_workspace(workspace)
    job = get_job(ws, name)
    if job.finished:
        console.print(f"job {name} already ended ({job.status}): nothing to cancel.")
        return
    job = cancel_job(ws, name)
    console.print(f"job {name}: {job.status}")


@app.command()
def resume(
    name: str,
    stream: Annotated[bool, typer.Option(help="Follow the job's log until it ends.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Resume a failed, cancelled or killed job from its last complete checkpoint."""
    ws = open_workspace(workspace)
    job = resume_job(ws, name)
    console.print(f"resumed job {job.name}; follow it with: chattune job stream {name}")
    if stream:
        raise typer.Exit(_follow(ws, name))


@app.command()
def join(name: str, workspace: WorkspaceOpt = None) -> None:
    """Train job NAME's finetune step from this node too (`num_nodes_finetune` > 1).

    Run it on every node but the one that created the job, with the same workspace folder
    (a shared file system) and CHATTUNE_RDZV_ENDPOINT=host:port set on every node. It waits for
    the finetune step to start and exits with this node's torchrun exit code.
    """
    ws = open_workspace(workspace)
    raise typer.Exit(join_job(ws, name, lambda line: console.print(line, markup=False)))
