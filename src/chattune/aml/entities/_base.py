"""What every SDK entity shares: a readable print (the seed prints models and jobs)."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in _fields(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _fields(obj: Any) -> dict[str, Any]:
    return {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)
        if not f.name.startswith("_") and getattr(obj, f.name) not in (None, {}, [])
    }


class Printable:
    """Dataclass entities print as YAML, like `azure.ai.ml` entities do."""

    def _to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def __str__(self) -> str:
        return yaml.safe_dump(self._to_dict(), sort_keys=False, allow_unicode=True).rstrip()
