"""`chattune compute ...`: the workspace's computes, VM sizes and memory fit (workflow step 3)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from chattune.cli.common import (
    JsonOpt,
    WorkspaceOpt,
    console,
    list_table,
    open_workspace,
    print_json,
)
from chattune.compute.estimate import gib
from chattune.compute.fit import FitReport, PhaseFit, fit_report
from chattune.compute.store import create_compute, delete_compute, get_compute, list_computes
from chattune.compute.store import list_sizes as store_list_sizes
from chattune.host.machine import Machine, local_machine

app = typer.Typer(no_args_is_help=True)


def _machine_rows(m: Machine) -> dict[str, str]:
    gpus = [
        f"{g.index}: {g.name}, {gib(g.total_memory_bytes)}, sm {g.compute_capability}"
        for g in m.gpus
    ]
    return {
        "cpu": m.cpu_model,
        "cores": f"{m.physical_cores} physical, {m.logical_cores} logical",
        "RAM": f"{gib(m.ram_total_bytes)} total, {gib(m.ram_available_bytes)} available",
        "bf16 on CPU": "yes (avx512_bf16/amx_bf16)" if m.cpu_bf16 else "no (emulated, slow)",
        "gpus": "\n".join(gpus) if gpus else "0 (training and serving run on the CPU)",
    }


@app.command()
def show(
    name: Annotated[str | None, typer.Argument(help="One compute; default: all.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the workspace's computes with the machine that runs them and their VM sizes."""
    ws = open_workspace(workspace)
    machine = local_machine()
    computes = [get_compute(ws, name)] if name else list_computes(ws)
    if as_json:
        print_json(
            {"machine": machine.as_dict(), "computes": [c.as_dict(machine) for c in computes]}
        )
        return
    table = list_table(
        f"computes in {ws.root}", "name", "size", "family", "gpus", "vCPUs", "memory", "spec"
    )
    for c in computes:
        vm = c.vm_size(machine)
        spec = ", ".join(f"{k}={v}" for k, v in c.spec.items()) or "-"
        table.add_row(
            c.name, c.size, vm.family, str(vm.gpus), str(vm.v_cp_us), f"{vm.memory_gb} GiB", spec
        )
    console.print(table)
    m = Table(show_header=False, title="the machine that runs them (this one)")
    m.add_column(style="bold")
    m.add_column()
    for k, v in _machine_rows(machine).items():
        m.add_row(k, v)
    console.print(m)


@app.command()
def sizes(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List VM sizes (`compute.list_sizes()`): `local` and every size the computes recorded."""
    ws = open_workspace(workspace)
    found = store_list_sizes(ws)
    if as_json:
        print_json([s.as_dict() for s in found])
        return
    table = list_table(
        "VM sizes (numbers of this machine, which runs every compute)",
        *("name", "family", "gpus", "v_cp_us", "memory_gb", "os_vhd_size_mb"),
    )
    for s in found:
        table.add_row(
            s.name, s.family, str(s.gpus), str(s.v_cp_us), str(s.memory_gb), str(s.os_vhd_size_mb)
        )
    console.print(table)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Compute name: 2-32 letters, digits, hyphens.")],
    size: Annotated[str, typer.Option(help="VM size name, e.g. Standard_NC6s_v3.")] = "local",
    replace: Annotated[bool, typer.Option(help="Overwrite a compute of that name.")] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a named compute of a VM size; this machine runs its work."""
    ws = open_workspace(workspace)
    c = create_compute(ws, name, size, replace=replace)
    if as_json:
        print_json(c.as_dict())
        return
    console.print(f"compute [bold]{c.name}[/] recorded with size {c.size} (runs on this machine)")


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="Compute name.")],
    workspace: WorkspaceOpt = None,
) -> None:
    """Forget a named compute (`local` is built in and stays)."""
    delete_compute(open_workspace(workspace), name)
    console.print(f"compute [bold]{name}[/] deleted")


def _phase_table(report: FitReport, p: PhaseFit, title: str) -> Table:
    b = report.estimate.breakdown(p.phase)
    table = Table(title=f"{title}, per {report.device.upper()} device (peak: {b.moment})")
    table.add_column("component")
    table.add_column("memory", justify="right")
    for k, v in b.items():
        if v:
            table.add_row(k.replace("_", " "), gib(v))
    table.add_row("[bold]total[/]", f"[bold]{gib(b.total)}[/]")
    return table


def _say_fit(report: FitReport, p: PhaseFit, what: str) -> None:
    where = "free RAM" if report.device == "cpu" else "GPU memory"
    total = report.estimate.breakdown(p.phase).total
    if p.fits:
        console.print(f"[green]{what} fits[/]: {gib(total)} of {gib(p.available_bytes)} {where}.")
        return
    console.print(
        f"[red]{what} does not fit[/]: {gib(total)} needed, "
        f"{gib(p.available_bytes)} {where}. To fit, one of:"
    )
    for line in p.advice:
        console.print(f"  - {line}")


@app.command()
def fit(
    model: Annotated[str, typer.Option(help="Model name (chattune model list) or HF folder.")],
    lora: Annotated[bool, typer.Option("--lora/--full", help="LoRA adapters or full.")] = True,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    precision: Annotated[str, typer.Option(help='"32", "16" or "bf16".')] = "32",
    max_seq_length: Annotated[
        int, typer.Option(help="Tokens per sequence; -1 = the model's context.")
    ] = -1,
    batch_size: Annotated[int, typer.Option(help="Sequences per device per step.")] = 1,
    deepspeed_stage: Annotated[
        int | None, typer.Option(help="ZeRO stage 2 or 3 (GPUs only).")
    ] = None,
    gpus: Annotated[int, typer.Option(help="GPUs, one process each; 0 = CPU.")] = 0,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward.")
    ] = False,
    compute: Annotated[str, typer.Option(help="Compute name (chattune compute show).")] = "local",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Estimate peak memory per device to fine-tune and to serve a model; say if it fits."""
    ws = open_workspace(workspace)
    report = fit_report(
        ws,
        model,
        compute=compute,
        lora=lora,
        lora_r=lora_r,
        precision=precision,
        max_seq_length=max_seq_length,
        batch_size=batch_size,
        deepspeed_stage=deepspeed_stage,
        gpus=gpus,
        gradient_checkpointing=gradient_checkpointing,
    )
    if as_json:
        print_json(report.to_dict())
        return
    x = report.estimate.inputs
    settings: dict[str, Any] = {
        "method": f"LoRA r={x.lora_r}" if x.lora else "full fine-tuning",
        "precision": x.precision,
        "max_seq_length": x.max_seq_length,
        "batch_size": x.batch_size,
        "deepspeed_stage": x.deepspeed_stage or "-",
        "gpus": x.gpus,
        "gradient_checkpointing": x.gradient_checkpointing,
    }
    console.print(
        f"[bold]{model}[/] on compute [bold]{report.compute.name}[/] "
        f"(size {report.compute.size}): {report.estimate.num_parameters:,} parameters, "
        f"{report.estimate.trainable_parameters:,} trainable; "
        + ", ".join(f"{k} {v}" for k, v in settings.items())
    )
    console.print(_phase_table(report, report.training, "fine-tuning"))
    _say_fit(report, report.training, "fine-tuning")
    console.print(_phase_table(report, report.serving, "serving"))
    _say_fit(report, report.serving, "serving")
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")
