"""Endpoint keys at rest: the database holds digests; the clear keys are in one owner-only
file per endpoint; a key that is gone is regenerated, with a message that says how; an older
workspace's clear keys leave its database (and WAL) on first use."""

from __future__ import annotations

import json
import secrets
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from chattune.aml import MLClient
from chattune.aml.exceptions import ValidationException
from chattune.cli.main import main
from chattune.errors import EndpointError
from chattune.identity import DefaultAzureCredential
from chattune.serving import endpoints as E
from chattune.serving import service
from chattune.serving.control import lifecycle as control
from chattune.serving.keys import keys_path
from chattune.workspace import Workspace
from chattune.workspace import db as wsdb
from tests.serving.control.supervised import fake_model, serving_ws
from tests.serving.control.test_supervisor import deploy

__all__ = ["fake_model", "serving_ws"]  # fixtures


def cli_keys(capsys: pytest.CaptureFixture[str], ws: Workspace, name: str) -> dict[str, str]:
    assert main(["endpoint", "get-keys", name, "--json", "--workspace", str(ws.root)]) == 0
    return json.loads(capsys.readouterr().out)


def files_holding(root: Path, needle: str) -> list[Path]:
    """Every file under `root` whose bytes contain `needle`."""
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.integration
def test_no_key_in_clear_on_disk_but_in_the_owner_only_file(serving_ws, fake_model, capsys):
    ws = serving_ws
    ep = service.create_endpoint(ws, "keys-ep")
    deploy(ws, "keys-ep", "blue", fake_model())
    assert control.apply(ws, "keys-ep", E.update_traffic(ws, "keys-ep", {"blue": 100}))
    issued = [*cli_keys(capsys, ws, "keys-ep").values()]
    for key_type in ("primary", "secondary", "primary"):
        assert service.regenerate_key(ws, "keys-ep", key_type).live
        issued += cli_keys(capsys, ws, "keys-ep").values()
    current = cli_keys(capsys, ws, "keys-ep")
    revoked = sorted(set(issued) - set(current.values()))
    assert len(set(issued)) == 5 and len(revoked) == 3

    def status(key: str) -> int:
        r = httpx.post(
            ep.scoring_uri,
            json={"input_data": {"input_string": [{"role": "user", "content": "hi"}]}},
            headers={"Authorization": f"Bearer {key}"},
            trust_env=False,
        )
        return r.status_code

    assert [status(k) for k in current.values()] == [200, 200]
    assert [status(k) for k in revoked] == [401] * 3

    # every file of the workspace (database, WAL, logs, status files) while it all runs
    secret_file = keys_path(ws, "keys-ep")
    for key in revoked:
        assert files_holding(ws.root, key) == [], "a revoked key is still on disk"
    for key in current.values():
        assert files_holding(ws.root, key) == [secret_file]
    assert mode(secret_file) == 0o600 and mode(secret_file.parent) == 0o700
    assert mode(ws.root) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert mode(ws.root / f"chattune.db{suffix}") == 0o600

    service.delete_endpoint(ws, "keys-ep")
    assert not secret_file.exists()


def test_get_keys_explains_how_to_regenerate_when_the_clear_key_is_gone(workspace, capsys):
    ws = workspace
    E.create_endpoint(ws, "lost-ep", port=1)  # no processes: a stopped endpoint
    keys_path(ws, "lost-ep").unlink()
    ml = MLClient(DefaultAzureCredential(), "sub", "rg", "ws", workspace_path=ws.root)

    assert main(["endpoint", "get-keys", "lost-ep", "--workspace", str(ws.root)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the primary and secondary key of endpoint 'lost-ep' is not kept in clear" in err
    assert "regenerate-keys lost-ep --key-type primary" in err
    assert "regenerate-keys lost-ep --key-type secondary" in err
    with pytest.raises(ValidationException, match="regenerate-keys lost-ep"):
        ml.online_endpoints.get_keys("lost-ep")
    with pytest.raises(EndpointError, match="regenerate-keys lost-ep --key-type primary"):
        service.invoke(ws, "lost-ep", b"{}")

    E.regenerate_key(ws, "lost-ep", "primary")
    with pytest.raises(EndpointError) as exc:
        E.get_keys(ws, "lost-ep")
    assert "--key-type secondary" in exc.value.fix and "--key-type primary" not in exc.value.fix
    E.regenerate_key(ws, "lost-ep", "secondary")
    keys = ml.online_endpoints.get_keys("lost-ep")  # the seed's call
    assert keys.primary_key != keys.secondary_key and len(keys.primary_key) >= 40

    # a keys file that holds other keys than the endpoint's (restored from a backup) is not
    # handed out: the gateway would refuse them
    keys_path(ws, "lost-ep").write_text(json.dumps({"primary": "x", "secondary": "y"}))
    with pytest.raises(EndpointError, match="holds another key"):
        E.get_keys(ws, "lost-ep")


def test_an_older_workspace_moves_its_clear_keys_out_of_the_database(tmp_path: Path, capsys):
    root = tmp_path / "old-ws"
    root.mkdir()
    old = [secrets.token_urlsafe(32) for _ in range(4)]  # primary, secondary, then regenerated
    conn = sqlite3.connect(root / "chattune.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # the old values stay in the WAL too
    for script in wsdb.MIGRATIONS[:4]:  # schema v4: the key columns hold clear keys
        conn.executescript(script)
    conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '4')")
    conn.execute(
        "INSERT INTO endpoints(name, primary_key, secondary_key, created_at, updated_at)"
        " VALUES ('old-ep', ?, ?, 0, 0)",
        (old[0], old[1]),
    )
    conn.execute("PRAGMA wal_checkpoint")  # and in the database file
    conn.execute("UPDATE endpoints SET primary_key = ?, secondary_key = ?", (old[2], old[3]))
    assert files_holding(root, old[0]) and files_holding(root, old[3])
    conn.close()  # the last connection closing checkpoints the WAL: old[0] may survive in
    # the database file's free space

    ws = Workspace.open(root)
    assert [e.name for e in E.list_endpoints(ws)] == ["old-ep"]
    keys = E.get_keys(ws, "old-ep")
    assert (keys.primary_key, keys.secondary_key) == (old[2], old[3])
    for key in old[:2]:
        assert files_holding(root, key) == [], "a replaced key is still on disk"
    for key in old[2:]:
        assert files_holding(root, key) == [keys_path(ws, "old-ep")]
    row = ws.db().execute("SELECT * FROM endpoints").fetchone()
    assert row["primary_key_hash"].startswith("sha256:")
