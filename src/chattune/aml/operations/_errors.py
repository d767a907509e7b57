"""Run a service call and raise the Azure-shaped exception for a chattune error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chattune.aml.exceptions import as_azure
from chattune.errors import ChattuneError


@contextmanager
def azure_errors() -> Iterator[None]:
    try:
        yield
    except ChattuneError as exc:
        mapped = as_azure(exc)
        if mapped is exc:
            raise
        raise mapped from exc
