"""Online endpoints as rows of the workspace database, and their rules (names, traffic,
mirror traffic, keys). Deployments and instances are in `serving/deployments.py`.

The supervisor (`serving/control/supervisor.py`) makes the processes follow these rows. Every change
to an endpoint or one of its deployments bumps the endpoint's `updated_at` stamp (strictly
increasing): the supervisor writes back the stamp it has applied, which is how the CLI knows
a change is live.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from chattune.errors import EndpointError, EndpointNotFound
from chattune.workspace import Workspace
from chattune.workspace.names import ENDPOINT_NAME

AUTH_MODES = ("key",)
MAX_MIRROR_PERCENT = 50  # Azure: mirror traffic sums to 50 at most
KeyType = Literal["primary", "secondary"]


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


# -- validation ---------------------------------------------------------------------------
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


# -- endpoints ------------------------------------------------------------------------------
def endpoint_dir(ws: Workspace, name: str) -> Path:
    """`ws/endpoints/<name>`: the supervisor's log and status, the instances' logs.

    Raises:
        PathOutsideWorkspace: a link would lead the folder outside the workspace.
    """
    return ws.inside(ws.root / "endpoints" / name, under=ws.root / "endpoints")


def _endpoint(row: sqlite3.Row) -> Endpoint:
    d = dict(row)
    for k in ("traffic", "mirror_traffic", "tags"):
        d[k] = json.loads(d[k])
    return Endpoint(**d)


def touch(conn: sqlite3.Connection, name: str, **columns: Any) -> float:
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
        PathOutsideWorkspace: a link would lead the endpoint's folder out of the workspace.
    """
    ENDPOINT_NAME.check(name, EndpointError)
    endpoint_dir(ws, name)  # refuses a link leading out of the workspace, before any row
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
            return touch(conn, name, **columns)
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
        names = [
            r["name"]
            for r in conn.execute("SELECT name FROM deployments WHERE endpoint = ?", (name,))
        ]
        validate_traffic(traffic, mirror_traffic, names)
        return touch(
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
        return touch(conn, name, **{f"{key_type}_key": secrets.token_urlsafe(32)})


def delete_endpoint_rows(ws: Workspace, name: str) -> None:
    """Remove endpoint `name`, its deployments and its instance rows (processes are the
    caller's business: stop them first)."""
    with ws.write() as conn:
        conn.execute("DELETE FROM instances WHERE endpoint = ?", (name,))
        conn.execute("DELETE FROM deployments WHERE endpoint = ?", (name,))
        conn.execute("DELETE FROM endpoints WHERE name = ?", (name,))
