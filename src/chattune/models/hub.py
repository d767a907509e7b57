"""Reaching the Hugging Face Hub, or failing fast with a useful message when it can't be."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from chattune.errors import HubUnreachable

PROBE_TIMEOUT_S = 3.0


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline_reason() -> str | None:
    """Why the hub can't be used right now, or None if a TCP connection to it succeeds.

    Checks the offline switches first (`HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE`,
    `TRANSFORMERS_OFFLINE`), then opens one TCP connection with a short timeout, so an
    unreachable hub costs seconds, not the minutes of retries the hub client would spend.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{var} is set"
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"cannot connect to {url.hostname}:{port} ({exc.__class__.__name__}: {exc})"


def ensure_hub_reachable(what: str, offline_fix: str) -> None:
    """Raise `HubUnreachable` naming `what` was wanted and the offline alternative.

    Args:
        what: the hub resource, e.g. "model microsoft/Phi-3-mini-4k-instruct".
        offline_fix: what to do instead without network.
    """
    reason = hub_offline_reason()
    if reason:
        raise HubUnreachable(
            f"{what} needs the Hugging Face Hub at {hub_endpoint()}, which is not reachable: "
            f"{reason}.",
            fix=offline_fix,
        )
