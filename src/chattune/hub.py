"""Reaching the Hugging Face Hub, or knowing fast that it can't be reached.

Without network, the hub clients spend minutes in retries; one probe with a deadline
fails in seconds instead, so the error can name the offline alternative at once.
"""

from __future__ import annotations

import os
import threading

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The hub URL: `HF_ENDPOINT`, default https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_env() -> str | None:
    """The first of HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE set true."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def probe_hub(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Try one HTTP request to the hub.

    Any HTTP answer (even 401 or 404) means reachable. The request runs in a daemon
    thread joined with a deadline, because name resolution has no timeout of its own.
    Proxy variables (HTTPS_PROXY, NO_PROXY) are honoured.

    Args:
        endpoint: the hub URL.
        timeout: seconds for the whole probe.

    Returns:
        None when the hub answered, else why it did not.
    """
    import httpx

    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            httpx.head(f"{endpoint}/api/datasets", timeout=timeout, follow_redirects=False)
            outcome.append(None)
        except Exception as exc:  # any failure to get an answer means "not reachable"
            outcome.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    thread = threading.Thread(target=attempt, name="chattune-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]
