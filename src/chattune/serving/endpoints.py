"""Online endpoints and their deployments as rows of the workspace database.

This module owns the records and their rules (names, traffic, mirror traffic, keys,
deployment settings with Azure's defaults); the supervisor (`serving/supervisor.py`) makes the
processes follow them. Every change to an endpoint or one of its deployments bumps the
endpoint's `updated_at` stamp (strictly increasing): the supervisor writes back the stamp it
has applied, which is how the CLI knows a change is live.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chattune.errors import DeploymentNotFound, EndpointError, EndpointNotFound
from chattune.serving.gateway_config import AZURE_REQUEST_TIMEOUT_MS, MAX_REQUEST_TIMEOUT_MS
from chattune.workspace import Workspace

NAME_RE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
NAME_RULE = (
    "3-32 characters: letters, digits and '-', starting with a letter and ending with a "
    "letter or digit"
)
AUTH_MODES = ("key",)
MAX_MIRROR_PERCENT = 50  # Azure: mirror traffic sums to 50 at most
KeyType = Literal["primary", "secondary"]


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


@dataclass
class Endpoint:
    """One online endpoint row."""

    name: str
    description: str
    auth_mode: str
    primary_key: str
    secondary_key: str
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    tags: dict[str, str]
    port: int | None
    pid: int | None
    state: str
    error: str | None
    created_at: float
    updated_at: float

    @property
    def scoring_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    @property
    def openapi_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/swagger.json"

    def to_dict(self, keys: bool = False) -> dict[str, Any]:
        """The endpoint as JSON; keys are left out unless asked for."""
        d = asdict(self)
        if not keys:
            d.pop("primary_key")
            d.pop("secondary_key")
        d["scoring_uri"] = self.scoring_uri
        d["openapi_uri"] = self.openapi_uri
        return d


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


# -- validation ---------------------------------------------------------------------------
def validate_name(name: str, what: str = "endpoint") -> None:
    """Check an endpoint or deployment name against Azure's rule.

    Raises:
        EndpointError: the name breaks the rule (the message states it).
    """
    if not 3 <= len(name) <= 32 or not NAME_RE.match(name):
        raise EndpointError(
            f"{what} name {name!r} is not valid.", fix=f"use {NAME_RULE} (Azure's rule)."
        )


def parse_weights(text: str, flag: str = "--traffic") -> dict[str, int]:
    """`"blue=90,green=10"` -> `{"blue": 90, "green": 10}` (ints 0..100).

    Raises:
        EndpointError: a part is not NAME=INT, or a weight is outside 0..100.
    """
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            weight = int(value)
        except ValueError:
            weight = -1
        if not sep or not name or not 0 <= weight <= 100:
            raise EndpointError(
                f"{flag} part {part!r} is not DEPLOYMENT=PERCENT with a whole percent 0..100.",
                fix=f"write e.g. {flag} blue=90,green=10.",
            )
        if name in weights:
            raise EndpointError(f"{flag} names {name!r} twice.", fix="name each deployment once.")
        weights[name] = weight
    return weights


def validate_traffic(
    traffic: dict[str, int], mirror: dict[str, int], deployments: list[str]
) -> None:
    """Check live and mirror traffic against the endpoint's deployments, as Azure does.

    Live weights sum to 0 or 100; mirror traffic goes to one deployment at most, at most
    50%, and never to a deployment that takes live traffic.

    Raises:
        EndpointError: every problem found, in one message.
    """
    problems: list[str] = []
    for flag, weights in (("--traffic", traffic), ("--mirror-traffic", mirror)):
        unknown = sorted(set(weights) - set(deployments))
        if unknown:
            problems.append(
                f"{flag} names {', '.join(map(repr, unknown))}, not deployment(s) of this "
                f"endpoint (it has: {', '.join(deployments) or 'none'})"
            )
        bad = [f"{k}={v}" for k, v in weights.items() if not 0 <= v <= 100]
        if bad:
            problems.append(f"{flag} weights must be whole percents 0..100: {', '.join(bad)}")
    total = sum(traffic.values())
    if total not in (0, 100):
        problems.append(f"--traffic weights sum to {total}; they must sum to 100 (or all 0)")
    live_mirror = {k: v for k, v in mirror.items() if v > 0}
    if len(live_mirror) > 1:
        problems.append(
            f"--mirror-traffic names {len(live_mirror)} deployments; Azure mirrors to one only"
        )
    if sum(mirror.values()) > MAX_MIRROR_PERCENT:
        problems.append(
            f"--mirror-traffic is {sum(mirror.values())}%; at most {MAX_MIRROR_PERCENT}%"
        )
    both = sorted(k for k in live_mirror if traffic.get(k, 0) > 0)
    if both:
        problems.append(
            f"{', '.join(both)} would get live and mirror traffic; a deployment gets one or "
            "the other"
        )
    if problems:
        raise EndpointError(
            "traffic refused: " + "; ".join(problems) + ".",
            fix="fix the weights, e.g. --traffic blue=100 --mirror-traffic green=10.",
        )


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


# -- endpoints ------------------------------------------------------------------------------
def endpoint_dir(ws: Workspace, name: str) -> Path:
    """`ws/endpoints/<name>`: the supervisor's log and status, the instances' logs."""
    return ws.root / "endpoints" / name


def _endpoint(row: sqlite3.Row) -> Endpoint:
    d = dict(row)
    for k in ("traffic", "mirror_traffic", "tags"):
        d[k] = json.loads(d[k])
    return Endpoint(**d)


def _deployment(row: sqlite3.Row) -> Deployment:
    d = dict(row)
    d["settings"] = DeploymentSettings.model_validate_json(d["settings"])
    return Deployment(**d)


def _touch(conn: sqlite3.Connection, name: str, **columns: Any) -> float:
    """Set `columns` on endpoint `name` and bump its `updated_at`; return the new stamp.

    The stamp is strictly increasing even if the clock steps back, so "the supervisor has
    applied stamp >= mine" always means "my change is live"."""
    old = conn.execute("SELECT updated_at FROM endpoints WHERE name = ?", (name,)).fetchone()
    stamp = max(time.time(), old["updated_at"] + 1e-6)
    sets = ", ".join(f"{k} = ?" for k in [*columns, "updated_at"])
    conn.execute(f"UPDATE endpoints SET {sets} WHERE name = ?", (*columns.values(), stamp, name))
    return stamp


def create_endpoint(
    ws: Workspace,
    name: str,
    *,
    port: int,
    auth_mode: str = "key",
    description: str = "",
    tags: dict[str, str] | None = None,
) -> Endpoint:
    """Record a new endpoint with two fresh keys and the gateway `port` it keeps for life.

    Raises:
        EndpointError: bad name, an auth mode other than `key`, or the name is taken.
    """
    validate_name(name)
    if auth_mode not in AUTH_MODES:
        raise EndpointError(
            f"auth mode {auth_mode!r} is not supported here: aml_token and aad_token need "
            "Azure's identity service.",
            fix="use --auth-mode key (the seed's choice).",
        )
    now = time.time()
    with ws.write() as conn:
        if conn.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone():
            raise EndpointError(
                f"an endpoint named {name!r} already exists.",
                fix=f"pick another name, or delete it first: chattune endpoint delete {name}",
            )
        conn.execute(
            "INSERT INTO endpoints(name, description, auth_mode, primary_key, secondary_key,"
            " tags, port, state, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                name,
                description,
                auth_mode,
                secrets.token_urlsafe(32),
                secrets.token_urlsafe(32),
                json.dumps(tags or {}),
                port,
                "creating",
                now,
                now,
            ),
        )
    return get_endpoint(ws, name)


def get_endpoint(ws: Workspace, name: str) -> Endpoint:
    """The endpoint `name`.

    Raises:
        EndpointNotFound: no such endpoint; the message lists the existing ones.
    """
    row = ws.db().execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = [e.name for e in list_endpoints(ws)]
        raise EndpointNotFound(
            f"no endpoint named {name!r}.",
            fix=f"existing endpoints: {', '.join(known)}."
            if known
            else f"create it: chattune endpoint create {name}",
        )
    return _endpoint(row)


def list_endpoints(ws: Workspace) -> list[Endpoint]:
    """Every endpoint of the workspace, oldest first."""
    rows = ws.db().execute("SELECT * FROM endpoints ORDER BY created_at")
    return [_endpoint(r) for r in rows]


def set_endpoint_fields(ws: Workspace, name: str, *, bump: bool = True, **columns: Any) -> float:
    """Set plain columns of endpoint `name` (description, tags, state, pid, error) and return
    its stamp. JSON columns are encoded here. `bump=False` (the supervisor recording what it
    sees) leaves the stamp alone: only changes the supervisor must apply bump it.

    Raises:
        EndpointNotFound: no such endpoint.
    """
    get_endpoint(ws, name)
    for k in ("tags", "traffic", "mirror_traffic"):
        if k in columns:
            columns[k] = json.dumps(columns[k])
    with ws.write() as conn:
        if bump:
            return _touch(conn, name, **columns)
        sets = ", ".join(f"{k} = ?" for k in columns)
        conn.execute(f"UPDATE endpoints SET {sets} WHERE name = ?", (*columns.values(), name))
        row = conn.execute("SELECT updated_at FROM endpoints WHERE name = ?", (name,)).fetchone()
        return row["updated_at"]


def update_traffic(
    ws: Workspace,
    name: str,
    traffic: dict[str, int] | None = None,
    mirror_traffic: dict[str, int] | None = None,
) -> float:
    """Replace the live and/or mirror traffic of endpoint `name`; returns the new stamp.

    Raises:
        EndpointNotFound, EndpointError: unknown endpoint, or traffic that breaks the rules.
    """
    with ws.write() as conn:
        ep = get_endpoint(ws, name)
        traffic = ep.traffic if traffic is None else traffic
        mirror_traffic = ep.mirror_traffic if mirror_traffic is None else mirror_traffic
        validate_traffic(traffic, mirror_traffic, [d.name for d in list_deployments(ws, name)])
        return _touch(
            conn,
            name,
            traffic=json.dumps({k: v for k, v in traffic.items()}),
            mirror_traffic=json.dumps({k: v for k, v in mirror_traffic.items() if v > 0}),
        )


def regenerate_key(ws: Workspace, name: str, key_type: str) -> float:
    """Replace the primary or secondary key of `name`; returns the new stamp.

    Raises:
        EndpointError: key_type is neither `primary` nor `secondary`.
    """
    if key_type not in ("primary", "secondary"):
        raise EndpointError(
            f"key type {key_type!r} is not known.", fix="use --key-type primary or secondary."
        )
    get_endpoint(ws, name)
    with ws.write() as conn:
        return _touch(conn, name, **{f"{key_type}_key": secrets.token_urlsafe(32)})


def delete_endpoint_rows(ws: Workspace, name: str) -> None:
    """Remove endpoint `name`, its deployments and its instance rows (processes are the
    caller's business: stop them first)."""
    with ws.write() as conn:
        conn.execute("DELETE FROM instances WHERE endpoint = ?", (name,))
        conn.execute("DELETE FROM deployments WHERE endpoint = ?", (name,))
        conn.execute("DELETE FROM endpoints WHERE name = ?", (name,))


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
    """
    validate_name(name, "deployment")
    if instance_count < 1:
        raise EndpointError(
            f"--instance-count {instance_count} is below 1.", fix="pass 1 or more instances."
        )
    get_endpoint(ws, endpoint)
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
        stamp = _touch(conn, endpoint)
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
        return _touch(conn, endpoint)


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
        return _touch(
            conn, endpoint, traffic=json.dumps(traffic), mirror_traffic=json.dumps(mirror)
        )


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
