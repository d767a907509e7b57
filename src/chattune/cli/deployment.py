"""`chattune deployment ...`: deployments of an online endpoint (workflow step 7).

A deployment is `instance_count` model-server processes run by the endpoint's supervisor.
A new deployment gets 0% traffic: `chattune endpoint update E --traffic NAME=100` sends it
requests (Azure's `endpoint.traffic = {"demo": 100}`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
from chattune.errors import EndpointError
from chattune.serving import service
from chattune.serving.deployments import (
    Deployment,
    DeploymentSettings,
    get_deployment,
    list_deployments,
    validate_settings,
)
from chattune.serving.endpoints import endpoint_dir
from chattune.serving.service import Applied

app = typer.Typer(no_args_is_help=True)

EndpointOpt = Annotated[str, typer.Option("--endpoint", "-e", help="Endpoint name.")]
NameOpt = Annotated[str, typer.Option("--name", "-n", help="Deployment name.")]
_PROBE_FIELDS = ("initial_delay", "period", "timeout", "success_threshold", "failure_threshold")


def _opt(help: str) -> Any:
    return typer.Option(help=help, show_default=False)


# Request settings and probes, shared by `create` (Azure's defaults when left out) and
# `update` (the current value when left out).
TimeoutOpt = Annotated[
    int | None, _opt("request_timeout_ms (Azure: default 5000, max 180000); 408 after it.")
]
ConcurrencyOpt = Annotated[
    int | None, _opt("max_concurrent_requests_per_instance (default 1); 429 above 2x this x N.")
]
CountOpt = Annotated[int | None, _opt("Model-server processes (default 1).")]
LDelay = Annotated[float | None, _opt("Liveness: seconds before the first probe (10).")]
LPeriod = Annotated[float | None, _opt("Liveness: seconds between probes (10).")]
LTimeout = Annotated[float | None, _opt("Liveness: seconds a probe may take (2).")]
LSuccess = Annotated[int | None, _opt("Liveness: successes to count as alive (1).")]
LFailure = Annotated[int | None, _opt("Liveness: failures in a row that restart it (30).")]
RDelay = Annotated[float | None, _opt("Readiness: seconds before the first probe (10).")]
RPeriod = Annotated[float | None, _opt("Readiness: seconds between probes (10).")]
RTimeout = Annotated[float | None, _opt("Readiness: seconds a probe may take (2).")]
RSuccess = Annotated[int | None, _opt("Readiness: successes to join the rotation (1).")]
RFailure = Annotated[int | None, _opt("Readiness: failures to leave the rotation (30).")]


def _settings(base: DeploymentSettings, given: dict[str, Any]) -> DeploymentSettings:
    """`base` with the options the user gave (None = not given), validated as a whole."""
    values = base.model_dump()
    for key in ("request_timeout_ms", "max_concurrent_requests_per_instance", "engine"):
        if given.get(key) is not None:
            values[key] = given[key]
    for probe, prefix in (("liveness_probe", "liveness_"), ("readiness_probe", "readiness_")):
        for f in _PROBE_FIELDS:
            if given[prefix + f] is not None:
                values[probe][f] = given[prefix + f]
    return validate_settings(values)


def _progress_line(dep: Deployment) -> str:
    parts = [
        f"{i.idx}: {i.state}" + (f" (restarts {i.restarts})" if i.restarts else "")
        for i in dep.instances
    ]
    return f"deployment {dep.name}: {dep.state} — instances " + (", ".join(parts) or "starting")


def _waiting(
    name: str, change: Callable[[Callable[[Deployment], None]], tuple[Deployment, Applied]]
) -> tuple[Deployment, Applied]:
    """Run `change` (given the progress callback) under a spinner showing the instances."""
    t0 = time.monotonic()
    with console.status(f"deployment {name}: creating") as status:

        def show(dep: Deployment) -> None:
            status.update(f"{_progress_line(dep)} [{time.monotonic() - t0:.0f} s]")

        try:
            dep, applied = change(show)
        finally:
            status.stop()
    if applied.live and dep.state == "ready":
        console.print(f"[green]deployment {name} is ready[/] in {time.monotonic() - t0:.1f} s")
    return dep, applied


@app.command()
def create(
    endpoint: EndpointOpt,
    name: NameOpt,
    model: Annotated[str, typer.Option(help="NAME:VERSION or NAME@latest (registered).")],
    instance_count: CountOpt = None,
    instance_type: Annotated[str, typer.Option(help="Recorded; runs on this machine.")] = "local",
    request_timeout_ms: TimeoutOpt = None,
    max_concurrent_requests_per_instance: ConcurrencyOpt = None,
    liveness_initial_delay: LDelay = None,
    liveness_period: LPeriod = None,
    liveness_timeout: LTimeout = None,
    liveness_success_threshold: LSuccess = None,
    liveness_failure_threshold: LFailure = None,
    readiness_initial_delay: RDelay = None,
    readiness_period: RPeriod = None,
    readiness_timeout: RTimeout = None,
    readiness_success_threshold: RSuccess = None,
    readiness_failure_threshold: RFailure = None,
    lora_only: Annotated[
        bool, typer.Option(help="Serve the LoRA adapter on a base shared with others.")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="auto (vLLM where installed and it supports the model, else builtin), vllm "
            "or builtin. `chattune engine list` shows what is installed."
        ),
    ] = "auto",
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return at once.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for ready.")] = 900.0,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a model version to an endpoint (0% traffic) and wait until it is ready."""
    ws = open_workspace(workspace)
    settings = _settings(DeploymentSettings(), locals())
    dep, applied = _waiting(
        name,
        lambda show: service.create_deployment(
            ws,
            endpoint,
            name,
            model,
            settings,
            instance_count=instance_count or 1,
            instance_type=instance_type,
            lora_only=lora_only,
            wait=not no_wait,
            timeout_s=timeout,
            on_progress=show,
        ),
    )
    if (no_wait or not applied.live) and not as_json:
        console.print(f"deployment {name} of {dep.model} created ({applied.note}).")
    if as_json:
        print_json(get_deployment(ws, endpoint, name).to_dict())
    else:
        console.print(f"send it traffic: chattune endpoint update {endpoint} --traffic {name}=100")


@app.command()
def update(
    endpoint: EndpointOpt,
    name: NameOpt,
    instance_count: CountOpt = None,
    request_timeout_ms: TimeoutOpt = None,
    max_concurrent_requests_per_instance: ConcurrencyOpt = None,
    liveness_initial_delay: LDelay = None,
    liveness_period: LPeriod = None,
    liveness_timeout: LTimeout = None,
    liveness_success_threshold: LSuccess = None,
    liveness_failure_threshold: LFailure = None,
    readiness_initial_delay: RDelay = None,
    readiness_period: RPeriod = None,
    readiness_timeout: RTimeout = None,
    readiness_success_threshold: RSuccess = None,
    readiness_failure_threshold: RFailure = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return at once.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for ready.")] = 900.0,
    workspace: WorkspaceOpt = None,
) -> None:
    """Change instance count, request settings or probes; its instances are replaced."""
    ws = open_workspace(workspace)
    settings = _settings(get_deployment(ws, endpoint, name).settings, locals())
    _, applied = _waiting(
        name,
        lambda show: service.update_deployment(
            ws,
            endpoint,
            name,
            instance_count=instance_count,
            settings=settings,
            wait=not no_wait,
            timeout_s=timeout,
            on_progress=show,
        ),
    )
    if no_wait or not applied.live:
        console.print(f"deployment {name} updated ({applied.note}).")


@app.command()
def show(
    endpoint: EndpointOpt, name: NameOpt, workspace: WorkspaceOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a deployment: model, state (with the failure reason), settings, instances."""
    ws = open_workspace(workspace)
    dep = get_deployment(ws, endpoint, name)
    if as_json:
        print_json(dep.to_dict())
        return
    s = dep.settings
    table = Table(show_header=False, title=f"deployment {endpoint}/{name}")
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "model": dep.model,
        "state": dep.state,
        "error": dep.error or "-",
        "instance count": str(dep.instance_count),
        "request_timeout_ms": str(s.request_timeout_ms),
        "max_concurrent_requests_per_instance": str(s.max_concurrent_requests_per_instance),
        "liveness probe": s.liveness_probe.model_dump_json(),
        "readiness probe": s.readiness_probe.model_dump_json(),
        "lora only": f"yes (group {dep.group})" if s.lora_only else "no",
        "engine": f"{s.engine_chosen} ({s.engine_reason or 'created before engines'})",
    }
    for i in dep.instances:
        rows[f"instance {i.idx}"] = (
            f"{i.state}, pid {i.pid}, port {i.port}, restarts {i.restarts}"
            + (f", {i.error}" if i.error else "")
        )
    for k, v in rows.items():
        table.add_row(k, v)
    console.print(table)


@app.command("list")
def list_cmd(
    endpoint: EndpointOpt, workspace: WorkspaceOpt = None, as_json: JsonOpt = False
) -> None:
    """List the deployments of an endpoint."""
    ws = open_workspace(workspace)
    deps = list_deployments(ws, endpoint)
    if as_json:
        print_json([d.to_dict() for d in deps])
        return
    table = list_table(
        f"deployments of {endpoint}", "name", "model", "engine", "state", "instances"
    )
    table.add_column("error", overflow="fold")  # free text: long words may fold
    for d in deps:
        ready = sum(i.state == "ready" for i in d.instances)
        table.add_row(
            d.name,
            d.model,
            d.settings.engine_chosen,
            d.state,
            f"{ready}/{d.instance_count} ready",
            d.error or "-",
        )
    console.print(table)


@app.command()
def logs(
    endpoint: EndpointOpt,
    name: NameOpt,
    instance: Annotated[int, typer.Option(help="Instance index.")] = 0,
    lines: Annotated[int, typer.Option(help="Print the last N lines.")] = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Print an instance's log (model-server output, one file across its restarts)."""
    ws = open_workspace(workspace)
    dep = get_deployment(ws, endpoint, name)
    path = endpoint_dir(ws, endpoint) / dep.group / f"instance-{instance}.log"
    if not path.exists():
        raise EndpointError(
            f"no log for instance {instance} of {name!r} at {path}.",
            fix=f"instances are 0..{dep.instance_count - 1}; a log appears once it starts.",
        )
    with path.open(errors="replace") as f:
        for line in f.readlines()[-lines:]:
            print(line, end="")
        while follow:
            line = f.readline()
            if line:
                print(line, end="", flush=True)
            else:
                time.sleep(0.2)


@app.command()
def delete(endpoint: EndpointOpt, name: NameOpt, workspace: WorkspaceOpt = None) -> None:
    """Delete a deployment (refused while it has live traffic: set it to 0 first)."""
    ws = open_workspace(workspace)
    applied = service.delete_deployment(ws, endpoint, name)
    console.print(f"deployment {name} deleted ({applied.note})")
