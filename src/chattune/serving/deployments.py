"""Deployments of an online endpoint and their instances, as rows of the workspace database:
settings with Azure's defaults (request settings, probes), create/get/list/update/delete, and
what the supervisor records of its processes.

Every change here bumps the endpoint's stamp (see `serving/endpoints.py`), so the CLI can wait
for the supervisor to apply it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chattune.errors import DeploymentNotFound, EndpointError
from chattune.serving.endpoints import endpoint_dir, get_endpoint, touch
from chattune.serving.gateway.config import AZURE_REQUEST_TIMEOUT_MS, MAX_REQUEST_TIMEOUT_MS
from chattune.workspace import Workspace
from chattune.workspace.names import DEPLOYMENT_NAME


class ProbeSettings(BaseModel):
    """Azure's `ProbeSettings` with its defaults (seconds and counts)."""

    model_config = ConfigDict(extra="forbid")

    initial_delay: float = Field(10.0, ge=0)  # s after start before the first probe
    period: float = Field(10.0, gt=0)  # s between probes
    timeout: float = Field(2.0, gt=0)  # s a probe may take
    success_threshold: int = Field(1, ge=1)  # consecutive successes to count as healthy
    failure_threshold: int = Field(30, ge=1)  # consecutive failures to count as failed


class DeploymentSettings(BaseModel):
    """Request settings, probes and the LoRA sharing of a deployment (`deployments.settings`)."""

    model_config = ConfigDict(extra="forbid")

    request_timeout_ms: int = Field(AZURE_REQUEST_TIMEOUT_MS, ge=1, le=MAX_REQUEST_TIMEOUT_MS)
    max_concurrent_requests_per_instance: int = Field(1, ge=1)
    liveness_probe: ProbeSettings = Field(default_factory=ProbeSettings)
    readiness_probe: ProbeSettings = Field(default_factory=ProbeSettings)
    lora_only: bool = False
    base_id: str | None = None  # hash of the base weights (LoRA-only: the sharing key)
    group: str | None = None  # the process group serving it: its own name, or lora-<base>
    engine: Literal["auto", "vllm", "builtin"] = "auto"  # what --engine asked for
    engine_chosen: Literal["builtin", "vllm"] = "builtin"  # what runs (chosen at create)
    engine_reason: str = ""  # why (`control.vllm.choose_engine`)


@dataclass
class Instance:
    """One model-server process of a deployment, as the supervisor last recorded it."""

    endpoint: str
    deployment: str
    idx: int
    pid: int | None
    port: int | None
    state: str
    restarts: int
    error: str | None
    updated_at: float


@dataclass
class Deployment:
    """One deployment row, with its settings parsed."""

    endpoint: str
    name: str
    model_name: str
    model_version: str
    instance_type: str
    instance_count: int
    settings: DeploymentSettings
    state: str
    error: str | None
    generation: int
    created_at: float
    updated_at: float
    instances: list[Instance] = field(default_factory=list)

    @property
    def model(self) -> str:
        return f"{self.model_name}:{self.model_version}"

    @property
    def group(self) -> str:
        """The name of the process group (and log folder) that serves this deployment."""
        return self.settings.group or self.name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settings"] = self.settings.model_dump()
        d["model"] = self.model
        return d


def validate_settings(values: dict[str, Any]) -> DeploymentSettings:
    """Build `DeploymentSettings`, reporting every bad field at once by its CLI flag.

    Raises:
        EndpointError: one or more fields are out of range.
    """
    try:
        return DeploymentSettings.model_validate(values)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_probe", "").replace(
                "_", "-"
            )
            parts.append(f"{flag}: {err['msg']}")
        raise EndpointError(
            "deployment settings refused: " + "; ".join(parts) + ".",
            fix=f"request_timeout_ms is 1..{MAX_REQUEST_TIMEOUT_MS}; counts and periods are "
            "positive.",
        ) from exc


def _deployment(row: sqlite3.Row) -> Deployment:
    d = dict(row)
    d["settings"] = DeploymentSettings.model_validate_json(d["settings"])
    return Deployment(**d)


# -- deployments ---------------------------------------------------------------------------
def create_deployment(
    ws: Workspace,
    endpoint: str,
    name: str,
    *,
    model_name: str,
    model_version: str,
    settings: DeploymentSettings,
    instance_count: int = 1,
    instance_type: str = "local",
) -> tuple[Deployment, float]:
    """Record a new deployment of `endpoint` (0% traffic, state creating).

    Returns:
        the deployment and the endpoint's new stamp.

    Raises:
        EndpointNotFound, EndpointError: unknown endpoint, bad name or count, name taken.
        PathOutsideWorkspace: a link would lead the deployment's folder out of the workspace.
    """
    DEPLOYMENT_NAME.check(name, EndpointError)
    if instance_count < 1:
        raise EndpointError(
            f"--instance-count {instance_count} is below 1.", fix="pass 1 or more instances."
        )
    get_endpoint(ws, endpoint)
    ws.inside(endpoint_dir(ws, endpoint) / name, under=endpoint_dir(ws, endpoint))  # its logs
    now = time.time()
    with ws.write() as conn:
        taken = conn.execute(
            "SELECT 1 FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name)
        ).fetchone()
        if taken:
            raise EndpointError(
                f"endpoint {endpoint!r} already has a deployment {name!r}.",
                fix="pick another --name, or change it with `chattune deployment update`.",
            )
        conn.execute(
            "INSERT INTO deployments(endpoint, name, model_name, model_version, instance_type,"
            " instance_count, settings, state, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                endpoint,
                name,
                model_name,
                model_version,
                instance_type,
                instance_count,
                settings.model_dump_json(),
                "creating",
                now,
                now,
            ),
        )
        stamp = touch(conn, endpoint)
    return get_deployment(ws, endpoint, name), stamp


def get_deployment(ws: Workspace, endpoint: str, name: str) -> Deployment:
    """Deployment `name` of `endpoint`, with its instances.

    Raises:
        EndpointNotFound, DeploymentNotFound: the message lists what exists.
    """
    get_endpoint(ws, endpoint)
    row = (
        ws.db()
        .execute("SELECT * FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name))
        .fetchone()
    )
    if row is None:
        known = [d.name for d in list_deployments(ws, endpoint)]
        raise DeploymentNotFound(
            f"endpoint {endpoint!r} has no deployment {name!r}.",
            fix=f"its deployments: {', '.join(known)}."
            if known
            else "create one: chattune deployment create --endpoint "
            f"{endpoint} --name {name} --model NAME:VERSION",
        )
    dep = _deployment(row)
    dep.instances = list_instances(ws, endpoint, name)
    return dep


def list_deployments(ws: Workspace, endpoint: str) -> list[Deployment]:
    """The deployments of `endpoint`, oldest first, with their instances."""
    rows = ws.db().execute(
        "SELECT * FROM deployments WHERE endpoint = ? ORDER BY created_at", (endpoint,)
    )
    deps = [_deployment(r) for r in rows]
    for d in deps:
        d.instances = list_instances(ws, endpoint, d.name)
    return deps


def update_deployment(
    ws: Workspace,
    endpoint: str,
    name: str,
    *,
    instance_count: int | None = None,
    settings: DeploymentSettings | None = None,
) -> float:
    """Change a deployment's instance count and/or settings; bumps its generation so the
    supervisor replaces its instances. Returns the endpoint's new stamp."""
    dep = get_deployment(ws, endpoint, name)
    if instance_count is not None and instance_count < 1:
        raise EndpointError(
            f"--instance-count {instance_count} is below 1.", fix="pass 1 or more instances."
        )
    with ws.write() as conn:
        conn.execute(
            "UPDATE deployments SET instance_count = ?, settings = ?, generation = ?,"
            " state = 'creating', error = NULL, updated_at = ? WHERE endpoint = ? AND name = ?",
            (
                instance_count or dep.instance_count,
                (settings or dep.settings).model_dump_json(),
                dep.generation + 1,
                time.time(),
                endpoint,
                name,
            ),
        )
        return touch(conn, endpoint)


def delete_deployment(ws: Workspace, endpoint: str, name: str) -> float:
    """Remove deployment `name` (refused while it takes live traffic, as in Azure); mirror
    traffic to it is dropped. Returns the endpoint's new stamp."""
    get_deployment(ws, endpoint, name)
    with ws.write() as conn:
        ep = get_endpoint(ws, endpoint)
        if ep.traffic.get(name, 0) > 0:
            raise EndpointError(
                f"deployment {name!r} takes {ep.traffic[name]}% of the live traffic of "
                f"{endpoint!r}.",
                fix=f"set its traffic to 0 first: chattune endpoint update {endpoint} "
                "--traffic ... (weights of the other deployments summing to 100, or all 0).",
            )
        conn.execute("DELETE FROM deployments WHERE endpoint = ? AND name = ?", (endpoint, name))
        conn.execute(
            "DELETE FROM instances WHERE endpoint = ? AND deployment = ?", (endpoint, name)
        )
        traffic = {k: v for k, v in ep.traffic.items() if k != name}
        mirror = {k: v for k, v in ep.mirror_traffic.items() if k != name}
        return touch(conn, endpoint, traffic=json.dumps(traffic), mirror_traffic=json.dumps(mirror))


def set_deployment_state(
    ws: Workspace, endpoint: str, name: str, state: str, error: str | None = None
) -> None:
    """Record what the supervisor sees of a deployment (creating | ready | failed)."""
    with ws.write() as conn:
        conn.execute(
            "UPDATE deployments SET state = ?, error = ?, updated_at = ?"
            " WHERE endpoint = ? AND name = ?",
            (state, error, time.time(), endpoint, name),
        )


# -- instances -------------------------------------------------------------------------------
def list_instances(ws: Workspace, endpoint: str, deployment: str | None = None) -> list[Instance]:
    """Instance rows of an endpoint (or one deployment), by deployment and index."""
    query, args = "SELECT * FROM instances WHERE endpoint = ?", [endpoint]
    if deployment is not None:
        query, args = query + " AND deployment = ?", [endpoint, deployment]
    rows = ws.db().execute(query + " ORDER BY deployment, idx", args)
    return [Instance(**dict(r)) for r in rows]


def replace_instances(ws: Workspace, endpoint: str, instances: list[Instance]) -> None:
    """Make the instance rows of `endpoint` exactly `instances` (the supervisor's view)."""
    with ws.write() as conn:
        conn.execute("DELETE FROM instances WHERE endpoint = ?", (endpoint,))
        conn.executemany(
            "INSERT INTO instances(endpoint, deployment, idx, pid, port, state, restarts,"
            " error, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (
                    i.endpoint,
                    i.deployment,
                    i.idx,
                    i.pid,
                    i.port,
                    i.state,
                    i.restarts,
                    i.error,
                    i.updated_at,
                )
                for i in instances
            ],
        )
