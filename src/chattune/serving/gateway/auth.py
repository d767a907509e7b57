"""The gateway's key check: API keys are kept as SHA-256 digests (`serving/keys.py`) and
compared in constant time."""

from __future__ import annotations

import secrets

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chattune.errors import AuthenticationFailed
from chattune.serving.gateway.config import GatewayConfig, current_config
from chattune.serving.keys import key_digest

__all__ = ["key_digest", "valid_key"]

_bearer = HTTPBearer(auto_error=False, description="the endpoint's primary or secondary key")


async def valid_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    config: GatewayConfig = Depends(current_config),
) -> None:
    """Accept the request only with `Authorization: Bearer <key>` of the endpoint.

    The scheme is case-insensitive, the key is not. The key's digest is compared with every
    stored digest in constant time and without stopping at the first match, so the timing
    tells nothing about which key (or how much of one) matched.

    Raises:
        AuthenticationFailed: the key is missing or wrong (401, `WWW-Authenticate: Bearer`).
    """
    given = key_digest(credentials.credentials) if credentials else None
    matched = False
    for digest in config.key_digests:
        matched |= secrets.compare_digest(given or b"", digest)
    if given is not None and matched:
        return
    if "authorization" not in request.headers:
        what = "no key was sent"
    elif credentials is None:
        what = "the Authorization header is not `Bearer <key>`"
    else:
        what = f"the key is not a key of endpoint '{config.endpoint}'"
    raise AuthenticationFailed(
        f"{what}.",
        fix="send `Authorization: Bearer <key>` with the endpoint's primary or secondary key "
        f"(`chattune endpoint get-keys {config.endpoint}`).",
    )
