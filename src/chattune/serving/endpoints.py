"""Online endpoints as rows of the workspace database, and their rules (names, traffic,
mirror traffic, keys). Deployments and instances are in `serving/deployments.py`.

Keys: a row holds the digests of its two keys; the clear keys live in the endpoint's
owner-only keys file (`serving/keys.py`), written in the transaction that stores the digests.

The supervisor (`serving/control/supervisor.py`) makes the processes follow these rows. Every change
to an endpoint or one of its deployments bumps the endpoint's `updated_at` stamp (strictly
increasing): the supervisor writes back the stamp it has applied, which is how the CLI knows
a change is live.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from chattune.errors import EndpointError, EndpointNotFound
from chattune.serving import keys as K
from chattune.workspace import Workspace
from chattune.workspace.db import scrub

NAME_RE = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
NAME_RULE = (
    "3-32 characters: letters, digits and '-', starting with a letter and ending with a "
    "letter or digit"
)
AUTH_MODES = ("key",)
MAX_MIRROR_PERCENT = 50  # Azure: mirror traffic sums to 50 at most
KeyType = Literal["primary", "secondary"]
KEY_TYPES: tuple[KeyType, ...] = ("primary", "secondary")


@dataclass
class Endpoint:
    """One online endpoint row. Its keys are only digests (`sha256:<hex>`): `get_keys`
    reads the clear keys."""

    name: str
    description: str
    auth_mode: str
    primary_key_hash: str
    secondary_key_hash: str
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

    def key_digests(self) -> dict[str, str]:
        """Key type -> the digest the gateway accepts."""
        return {"primary": self.primary_key_hash, "secondary": self.secondary_key_hash}

    def to_dict(self) -> dict[str, Any]:
        """The endpoint as JSON (without its key digests)."""
        d = asdict(self)
        d.pop("primary_key_hash")
        d.pop("secondary_key_hash")
        d["scoring_uri"] = self.scoring_uri
        d["openapi_uri"] = self.openapi_uri
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


# -- endpoints ------------------------------------------------------------------------------
def endpoint_dir(ws: Workspace, name: str) -> Path:
    """`ws/endpoints/<name>`: the supervisor's log and status, the instances' logs."""
    return ws.root / "endpoints" / name


def _endpoint(row: dict[str, Any]) -> Endpoint:
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
    """
    validate_name(name)
    if auth_mode not in AUTH_MODES:
        raise EndpointError(
            f"auth mode {auth_mode!r} is not supported here: aml_token and aad_token need "
            "Azure's identity service.",
            fix="use --auth-mode key (the seed's choice).",
        )
    now = time.time()
    keys = {kind: K.new_key() for kind in KEY_TYPES}
    with ws.write() as conn:
        if conn.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone():
            raise EndpointError(
                f"an endpoint named {name!r} already exists.",
                fix=f"pick another name, or delete it first: chattune endpoint delete {name}",
            )
        conn.execute(
            "INSERT INTO endpoints(name, description, auth_mode, primary_key_hash,"
            " secondary_key_hash, tags, port, state, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                name,
                description,
                auth_mode,
                K.stored_digest(keys["primary"]),
                K.stored_digest(keys["secondary"]),
                json.dumps(tags or {}),
                port,
                "creating",
                now,
                now,
            ),
        )
        K.keep_keys(ws, name, keys)
    return get_endpoint(ws, name)


def get_endpoint(ws: Workspace, name: str) -> Endpoint:
    """The endpoint `name`.

    Raises:
        EndpointNotFound: no such endpoint; the message lists the existing ones.
    """
    rows = _rows(ws, "SELECT * FROM endpoints WHERE name = ?", (name,))
    if not rows:
        known = [e.name for e in list_endpoints(ws)]
        raise EndpointNotFound(
            f"no endpoint named {name!r}.",
            fix=f"existing endpoints: {', '.join(known)}."
            if known
            else f"create it: chattune endpoint create {name}",
        )
    return _endpoint(rows[0])


def list_endpoints(ws: Workspace) -> list[Endpoint]:
    """Every endpoint of the workspace, oldest first."""
    return [_endpoint(r) for r in _rows(ws, "SELECT * FROM endpoints ORDER BY created_at")]


def _rows(ws: Workspace, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Endpoint rows as dicts; a clear key an older chattune stored is moved out of the
    database first (`_move_clear_keys`)."""
    rows = [dict(r) for r in ws.db().execute(sql, args)]
    if all(K.is_stored_digest(r[f"{kind}_key_hash"]) for r in rows for kind in KEY_TYPES):
        return rows
    if not ws.db().in_transaction:
        _move_clear_keys(ws)
        return [dict(r) for r in ws.db().execute(sql, args)]
    # inside the caller's transaction the database is left for the next read to fix; the
    # rows read now carry digests all the same
    for row in rows:
        clear = _clear_keys(row)
        K.keep_keys(ws, row["name"], clear)
        row.update({f"{k}_key_hash": K.stored_digest(v) for k, v in clear.items()})
    return rows


def _clear_keys(row: Any) -> dict[str, str]:
    """Key type -> clear key, for the key columns of `row` that hold no digest."""
    return {
        kind: row[f"{kind}_key_hash"]
        for kind in KEY_TYPES
        if not K.is_stored_digest(row[f"{kind}_key_hash"])
    }


def _move_clear_keys(ws: Workspace) -> None:
    """Upgrade an older workspace, whose rows hold clear keys: each key goes to the
    endpoint's keys file and its digest to the row; then the database is scrubbed, so the
    clear keys leave its file and its WAL."""
    with ws.write() as conn:  # read again under the write lock: another process may have won
        for row in conn.execute("SELECT * FROM endpoints").fetchall():
            clear = _clear_keys(row)
            if clear:
                K.keep_keys(ws, row["name"], clear)
                digests = {f"{k}_key_hash": K.stored_digest(v) for k, v in clear.items()}
                sets = ", ".join(f"{k} = ?" for k in digests)
                conn.execute(
                    f"UPDATE endpoints SET {sets} WHERE name = ?", (*digests.values(), row["name"])
                )
    scrub(ws.db())


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
    """Replace the primary or secondary key of `name`; returns the new stamp. The database
    gets the new key's digest, the endpoint's keys file the clear key.

    Raises:
        EndpointError: key_type is neither `primary` nor `secondary`.
    """
    if key_type not in KEY_TYPES:
        raise EndpointError(
            f"key type {key_type!r} is not known.", fix="use --key-type primary or secondary."
        )
    get_endpoint(ws, name)
    key = K.new_key()
    with ws.write() as conn:
        stamp = touch(conn, name, **{f"{key_type}_key_hash": K.stored_digest(key)})
        K.keep_keys(ws, name, {key_type: key})
    return stamp


def get_keys(ws: Workspace, name: str) -> K.EndpointKeys:
    """The clear primary and secondary keys of endpoint `name`.

    Raises:
        EndpointNotFound: no such endpoint.
        EndpointError: a key is not kept in clear (the fix regenerates it).
    """
    kept = K.kept_keys(ws, name, get_endpoint(ws, name).key_digests())
    return K.EndpointKeys(primary_key=kept["primary"], secondary_key=kept["secondary"])


def get_key(ws: Workspace, name: str, key_type: KeyType = "primary") -> str:
    """One clear key of endpoint `name` (what `invoke` sends).

    Raises:
        EndpointNotFound, EndpointError: as `get_keys`, for that key alone.
    """
    digest = get_endpoint(ws, name).key_digests()[key_type]
    return K.kept_keys(ws, name, {key_type: digest})[key_type]


def delete_endpoint_rows(ws: Workspace, name: str) -> None:
    """Remove endpoint `name`, its deployments and its instance rows (processes are the
    caller's business: stop them first)."""
    with ws.write() as conn:
        conn.execute("DELETE FROM instances WHERE endpoint = ?", (name,))
        conn.execute("DELETE FROM deployments WHERE endpoint = ?", (name,))
        conn.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        K.forget_keys(ws, name)
