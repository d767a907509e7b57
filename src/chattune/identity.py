"""Stand-ins for `azure.identity` credentials: chattune needs no login.

The seed builds a credential before anything else; these classes make those lines run
unchanged (`from chattune.identity import DefaultAzureCredential`). A chattune workspace is
a folder on this machine, so access is the file system's; the token is a fixed local one.

Example:
    >>> DefaultAzureCredential().get_token("https://management.azure.com/.default").token
    'chattune-local'
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple


class AccessToken(NamedTuple):
    """As `azure.core.credentials.AccessToken`: the token and its expiry (unix seconds)."""

    token: str
    expires_on: int


class _LocalCredential:
    """A credential that always succeeds with a local token (no browser, no network)."""

    def __init__(self, **_kwargs: Any) -> None:
        pass

    def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        return AccessToken("chattune-local", int(time.time()) + 3600)

    def close(self) -> None:
        pass

    def __enter__(self) -> _LocalCredential:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class DefaultAzureCredential(_LocalCredential):
    """`azure.identity.DefaultAzureCredential`: needs no login with chattune."""


class InteractiveBrowserCredential(_LocalCredential):
    """`azure.identity.InteractiveBrowserCredential`: opens no browser with chattune."""


class AzureCliCredential(_LocalCredential):
    """`azure.identity.AzureCliCredential`: needs no `az login` with chattune."""


class ManagedIdentityCredential(_LocalCredential):
    """`azure.identity.ManagedIdentityCredential`: needs no identity with chattune."""
