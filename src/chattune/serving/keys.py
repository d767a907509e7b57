"""The keys of serving, made and checked in one place.

Endpoint keys (what clients send to the gateway): 32 random bytes each. The database keeps
only their SHA-256 digests (`sha256:<hex>`), which is all the gateway needs; the clear keys
are kept for `get-keys`, `invoke` and the SDK's `get_keys` in one owner-only file per
endpoint (`<workspace>/secrets/endpoint-<name>.json`, mode 0600 in a 0700 folder). A key of
32 random bytes needs no salt nor slow hash: there is no dictionary to try, and a digest
cannot be turned back into the key.

The instance key (what the gateway sends to its model-server instances): one per supervisor
run, made when it starts, never written to disk. Each instance gets it in its environment
(`INSTANCE_KEY_ENV`; never on its command line, which `ps` shows to every user), and
demands it as `Authorization: Bearer <key>` on every route but its probes, so a local
process that finds an instance's port cannot skip the gateway's keys, limits and timeouts.
Bearer is the OpenAI-compatible servers' scheme: an engine such as vLLM takes the same key
as its `--api-key` (through its `VLLM_API_KEY` environment variable).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from chattune.errors import EndpointError
from chattune.workspace import Workspace
from chattune.workspace.files import write_atomic
from chattune.workspace.permissions import PRIVATE_FILE

DIGEST_PREFIX = "sha256:"
KEY_BYTES = 32
# The model server reads its key from here (`python -m chattune.serving.model_server`).
INSTANCE_KEY_ENV = "CHATTUNE_MODEL_SERVER_KEY"


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(KEY_BYTES)


def key_digest(key: str) -> bytes:
    """The SHA-256 of a key: what the gateway compares with `secrets.compare_digest`."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def stored_digest(key: str) -> str:
    """What the database keeps of a key: `sha256:<hex>`."""
    return DIGEST_PREFIX + key_digest(key).hex()


def is_stored_digest(value: str) -> bool:
    """Whether a key column holds a digest (an older workspace's column holds a clear key)."""
    return value.startswith(DIGEST_PREFIX)


def digest_of_stored(value: str) -> bytes:
    """The digest bytes of a `sha256:<hex>` column value."""
    return bytes.fromhex(value.removeprefix(DIGEST_PREFIX))


# -- the owner-only keys file -----------------------------------------------------------------
@dataclass(frozen=True)
class EndpointKeys:
    """The clear keys of one endpoint (`repr` hides them)."""

    primary_key: str
    secondary_key: str

    def __repr__(self) -> str:
        return "EndpointKeys(primary_key=***, secondary_key=***)"


def keys_path(ws: Workspace, endpoint: str) -> Path:
    """`<workspace>/secrets/endpoint-<name>.json`: the endpoint's clear keys, mode 0600."""
    return ws.secrets_dir / f"endpoint-{endpoint}.json"


def read_kept_keys(ws: Workspace, endpoint: str) -> dict[str, str]:
    """The clear keys kept for `endpoint`, by type (`primary`, `secondary`); {} if none."""
    try:
        kept = json.loads(keys_path(ws, endpoint).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return {k: v for k, v in kept.items() if isinstance(v, str)} if isinstance(kept, dict) else {}


def keep_keys(ws: Workspace, endpoint: str, keys: dict[str, str]) -> None:
    """Set the kept clear keys of `endpoint` (by type), keeping the others; the file is 0600
    from its first byte. Call it inside the database transaction that stores the digests, so
    two changes of one endpoint's keys never interleave."""
    kept = {**read_kept_keys(ws, endpoint), **keys}
    write_atomic(keys_path(ws, endpoint), json.dumps(kept, indent=2) + "\n", mode=PRIVATE_FILE)


def forget_keys(ws: Workspace, endpoint: str) -> None:
    """Remove the kept clear keys of `endpoint` (it is deleted)."""
    keys_path(ws, endpoint).unlink(missing_ok=True)


def kept_keys(ws: Workspace, endpoint: str, digests: dict[str, str]) -> dict[str, str]:
    """The clear keys of `endpoint` named in `digests`, checked against the digests the
    gateway accepts.

    Args:
        digests: key type (`primary`, `secondary`) -> the database's `sha256:<hex>`.

    Returns:
        Key type -> clear key.

    Raises:
        EndpointError: a key is not kept (its file was removed, or holds another key than
            the endpoint's): the message names it, the fix regenerates it.
    """
    kept = read_kept_keys(ws, endpoint)
    missing = [
        kind
        for kind, digest in digests.items()
        if kind not in kept or not hmac.compare_digest(stored_digest(kept[kind]), digest)
    ]
    if missing:
        regenerate = " and ".join(
            f"`chattune endpoint regenerate-keys {endpoint} --key-type {kind}`" for kind in missing
        )
        raise EndpointError(
            f"the {' and '.join(missing)} key of endpoint {endpoint!r} is not kept in clear "
            f"here ({keys_path(ws, endpoint)} is missing or holds another key); the database "
            "keeps only a digest of each key, which cannot be turned back into it.",
            fix=f"make a new key with {regenerate}: it is printed once and kept in that file "
            "(the old key stops working).",
        )
    return {kind: kept[kind] for kind in digests}


# -- the instance key -------------------------------------------------------------------------
def new_instance_key() -> str:
    """A fresh instance key, made by a supervisor when it starts (never written to disk)."""
    return new_key()


def bearer(key: str) -> str:
    """The `Authorization` value that carries `key`."""
    return f"Bearer {key}"


def bearer_matches(authorization: str | None, key: str) -> bool:
    """Whether an `Authorization` header value is `Bearer <key>` (the scheme in any case),
    compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), key.encode("utf-8"))
