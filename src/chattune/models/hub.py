"""Model downloads need the hub: fail fast, naming the offline alternative, without it."""

from __future__ import annotations

import os

from chattune.errors import HubUnreachable
from chattune.hub import hub_endpoint, offline_env, probe_hub


def ensure_hub_reachable(what: str, offline_fix: str) -> None:
    """Raise `HubUnreachable` naming `what` was wanted and the offline alternative.

    Args:
        what: the hub resource, e.g. "model microsoft/Phi-3-mini-4k-instruct".
        offline_fix: what to do instead without network.
    """
    var = offline_env()
    reason = f"{var}={os.environ[var]} is set" if var else probe_hub(hub_endpoint())
    if reason:
        raise HubUnreachable(
            f"{what} needs the Hugging Face Hub at {hub_endpoint()}, which is not reachable "
            f"({reason}).",
            fix=offline_fix,
        )
