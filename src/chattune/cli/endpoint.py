"""`chattune endpoint ...`: online endpoints with key auth (workflow steps 7-9).

Every command that changes an endpoint returns once the change is live: it signals the
endpoint's supervisor and waits for its acknowledgement.
"""

from __future__ import annotations

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
)
from chattune.errors import EndpointError
from chattune.serving import endpoints as endpoint_rows
from chattune.serving import service
from chattune.serving.deployments import list_deployments
from chattune.serving.endpoints import Endpoint, get_endpoint, list_endpoints, parse_weights
from chattune.workspace import Workspace
from chattune.workspace.processes import pid_alive

app = typer.Typer(no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Endpoint name.")]


def parse_tags(tags: list[str] | None) -> dict[str, str]:
    """`["k=v", ...]` -> dict.

    Raises:
        EndpointError: a tag without `=`.
    """
    out = {}
    for tag in tags or []:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise EndpointError(f"--tag {tag!r} is not KEY=VALUE.", fix="write --tag owner=me.")
        out[key] = value
    return out


def _describe(ws: Workspace, ep: Endpoint) -> dict:
    d = ep.to_dict()
    d["deployments"] = [
        {"name": x.name, "model": x.model, "state": x.state, "instances": x.instance_count}
        for x in list_deployments(ws, ep.name)
    ]
    d["running"] = pid_alive(ep.pid)
    if not d["running"] and ep.state not in ("deleting", "failed"):
        d["state"] = "stopped"
    return d


@app.command()
def create(
    name: NameArg,
    auth_mode: Annotated[
        str,
        typer.Option(
            help="Only 'key' (Azure's aml_token/aad_token need Azure's identity service)."
        ),
    ] = "key",
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an endpoint: two keys, a port, and its supervisor (returns when it answers)."""
    ws = open_workspace(workspace)
    with console.status(f"starting endpoint {name}"):
        ep = service.create_endpoint(
            ws, name, auth_mode=auth_mode, description=description, tags=parse_tags(tag)
        )
    if as_json:
        print_json(_describe(ws, ep))
        return
    console.print(f"[green]endpoint {name} is running[/]: scoring_uri {ep.scoring_uri}")
    console.print(
        f"next: chattune deployment create --endpoint {name} --name NAME --model NAME:VERSION"
    )


@app.command("list")
def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List the endpoints of the workspace."""
    ws = open_workspace(workspace)
    eps = [_describe(ws, e) for e in list_endpoints(ws)]
    if as_json:
        print_json(eps)
        return
    table = list_table(
        f"endpoints in {ws.root}", "name", "state", "scoring_uri", "traffic", "deployments"
    )
    for e in eps:
        table.add_row(
            e["name"],
            e["state"],
            e["scoring_uri"],
            ",".join(f"{k}={v}" for k, v in e["traffic"].items()) or "-",
            ", ".join(d["name"] for d in e["deployments"]) or "-",
        )
    console.print(table)


@app.command()
def show(name: NameArg, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Show an endpoint: URIs, traffic, mirror traffic, state and deployments."""
    ws = open_workspace(workspace)
    d = _describe(ws, get_endpoint(ws, name))
    if as_json:
        print_json(d)
        return
    table = Table(show_header=False, title=f"endpoint {name}")
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "state",
        "scoring_uri",
        "openapi_uri",
        "auth_mode",
        "description",
        "port",
        "pid",
        "error",
    ):
        table.add_row(key, str(d[key] if d[key] not in (None, "") else "-"))
    table.add_row("traffic", ", ".join(f"{k}={v}" for k, v in d["traffic"].items()) or "-")
    table.add_row(
        "mirror traffic", ", ".join(f"{k}={v}" for k, v in d["mirror_traffic"].items()) or "-"
    )
    for k, v in d["tags"].items():
        table.add_row(f"tag {k}", v)
    for dep in d["deployments"]:
        table.add_row(
            f"deployment {dep['name']}",
            f"{dep['model']}, {dep['instances']} instance(s), {dep['state']}",
        )
    console.print(table)


@app.command("get-keys")
def get_keys(name: NameArg, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Print the primary and secondary keys (kept in clear only in the workspace's owner-only
    secrets/ folder; the database holds their digests)."""
    keys = endpoint_rows.get_keys(open_workspace(workspace), name)
    if as_json:
        print_json({"primary_key": keys.primary_key, "secondary_key": keys.secondary_key})
        return
    print(f"primary_key: {keys.primary_key}\nsecondary_key: {keys.secondary_key}")


@app.command("regenerate-keys")
def regenerate_keys(
    name: NameArg,
    key_type: Annotated[str, typer.Option(help="primary or secondary.")] = "primary",
    workspace: WorkspaceOpt = None,
) -> None:
    """Replace one key; the old one is refused from the very next request."""
    ws = open_workspace(workspace)
    applied = service.regenerate_key(ws, name, key_type)
    console.print(
        f"{key_type} key of {name} regenerated ({applied.note}); see `endpoint get-keys`."
    )


@app.command()
def update(
    name: NameArg,
    traffic: Annotated[
        str | None, typer.Option(help="DEPLOYMENT=PERCENT,...; sums to 100 (or all 0).")
    ] = None,
    mirror_traffic: Annotated[
        str | None,
        typer.Option(help="DEPLOYMENT=PERCENT: one deployment without live traffic, <= 50."),
    ] = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Set the traffic split and/or mirror traffic (`endpoint.traffic = {"demo": 100}`)."""
    if traffic is None and mirror_traffic is None:
        raise EndpointError(
            "nothing to update.", fix="pass --traffic blue=100 and/or --mirror-traffic green=10."
        )
    ws = open_workspace(workspace)
    applied = service.update_traffic(
        ws,
        name,
        parse_weights(traffic) if traffic is not None else None,
        parse_weights(mirror_traffic, "--mirror-traffic") if mirror_traffic is not None else None,
    )
    ep = get_endpoint(ws, name)
    console.print(
        f"endpoint {name}: traffic {ep.traffic or '{}'}, mirror {ep.mirror_traffic or '{}'} "
        f"({applied.note})"
    )


@app.command()
def invoke(
    name: NameArg,
    request_file: Annotated[Path, typer.Option(help="JSON body to POST to /score.")],
    deployment: Annotated[
        str | None, typer.Option(help="Send to this deployment, bypassing the traffic split.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 300.0,
    workspace: WorkspaceOpt = None,
) -> None:
    """POST a request file to the endpoint's /score with its key; print the raw response."""
    ws = open_workspace(workspace)
    if not request_file.is_file():
        raise EndpointError(f"request file {request_file} does not exist.", fix="check the path.")
    r = service.invoke(
        ws, name, request_file.read_bytes(), deployment=deployment, timeout_s=timeout
    )
    print(r.text)
    if r.is_error:
        err_console.print(f"[bold red]error:[/] HTTP {r.status_code}")
        raise typer.Exit(1)


@app.command()
def delete(name: NameArg, workspace: WorkspaceOpt = None) -> None:
    """Stop every process of the endpoint, free its ports, remove it and its deployments."""
    ws = open_workspace(workspace)
    with console.status(f"deleting endpoint {name}"):
        service.delete_endpoint(ws, name)
    console.print(f"endpoint {name} deleted")
