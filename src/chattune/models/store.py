"""Model versions: the built-in catalog plus what the workspace imported or registered.

One namespace: a name's versions are its catalog card (if any) and every workspace row of
that name. `latest` is the most recently created version, as in Azure ML.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from chattune.errors import InvalidParameter, ModelNotFound
from chattune.models import loading
from chattune.models.card import ModelCard, builtin_cards
from chattune.workspace import Workspace
from chattune.workspace.names import MODEL_VERSION

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Kind = Literal["catalog", "imported", "registered"]
AssetType = Literal["mlflow_model", "custom_model"]


@dataclass
class ModelVersion:
    """One version of a model, Azure-style: `name`, `version`, `type`, `tags`, `id`, plus the
    card. `lineage` says where a registered version came from (see `chattune.registry`)."""

    name: str
    version: str
    kind: Kind
    created_at: datetime
    card: ModelCard
    path: Path | None = None
    source: str | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    type: AssetType = "custom_model"
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        if self.kind == "catalog":
            return f"azureml://registries/azureml/models/{self.name}/versions/{self.version}"
        return f"azureml:{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "type": self.type,
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "path": str(self.path) if self.path else None,
            "source": self.source,
            "description": self.description or self.card.description,
            "tags": self.tags,
            "card": self.card.summary(),
            "lineage": self.lineage,
        }


def _catalog_version(card: ModelCard) -> ModelVersion:
    return ModelVersion(
        name=card.name,
        version=card.version,
        kind="catalog",
        created_at=card.created_at,
        card=card,
        source=", ".join(s.describe() for s in card.sources),
        description=card.description,
    )


def _row_version(row: Any) -> ModelVersion:
    return ModelVersion(
        name=row["name"],
        version=row["version"],
        kind=row["kind"],
        created_at=datetime.fromtimestamp(row["created_at"], tz=UTC),
        card=ModelCard.model_validate_json(row["card"]),
        path=Path(row["path"]) if row["path"] else None,
        source=row["source"],
        description=row["description"],
        tags=json.loads(row["tags"]),
        type=row["asset_type"],
        lineage=json.loads(row["lineage"]),
    )


def list_models(ws: Workspace, name: str | None = None) -> list[ModelVersion]:
    """Every model version (catalog and workspace), oldest first within a name."""
    cards = builtin_cards()
    versions = [_catalog_version(c) for c in cards.values() if name in (None, c.name)]
    query = "SELECT * FROM models" + (" WHERE name = ?" if name else "")
    versions += [_row_version(r) for r in ws.db().execute(query, (name,) if name else ())]
    return sorted(versions, key=lambda v: (v.name.lower(), v.created_at))


def get_model(
    ws: Workspace, name: str, version: str | None = None, label: str | None = None
) -> ModelVersion:
    """One version of `name`: by `version`, or by `label` ("latest"); neither means latest.

    Raises:
        InvalidParameter: both version and label given, or an unknown label.
        ModelNotFound: no such name or version; the message lists what exists.
    """
    if version is not None and label is not None:
        raise InvalidParameter(
            "version and label are exclusive.", fix="pass either --version or --label, not both."
        )
    if label not in (None, "latest"):
        raise InvalidParameter(f"unknown label {label!r}.", fix="the only label is 'latest'.")
    versions = list_models(ws, name)
    if not versions:
        known = sorted({v.name for v in list_models(ws)})
        raise ModelNotFound(
            f"no model named {name!r}.",
            fix=f"pick one of {', '.join(known)} (chattune model list), or import it with "
            f"`chattune model import SOURCE --name {name}`.",
        )
    if version is None:
        return max(versions, key=lambda v: v.created_at)
    for v in versions:
        if v.version == version:
            return v
    raise ModelNotFound(
        f"model {name!r} has no version {version!r}.",
        fix=f"existing versions: {', '.join(v.version for v in versions)}.",
    )


def next_version(ws: Workspace, name: str) -> str:
    """One more than the largest numeric version of `name` (catalog included), from "1"."""
    numeric = [int(v.version) for v in list_models(ws, name) if v.version.isdigit()]
    return str(max(numeric, default=0) + 1)


def add_version(
    ws: Workspace,
    *,
    name: str,
    kind: Kind,
    card: ModelCard,
    path: Path | None,
    source: str | None,
    version: str | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    asset_type: AssetType = "custom_model",
    lineage: dict[str, Any] | None = None,
) -> ModelVersion:
    """Record a new workspace version of `name` (the next number when `version` is None).

    Raises:
        InvalidParameter: the version string is malformed or already exists.
    """
    if version is not None:
        MODEL_VERSION.check(version)
    with ws.write() as conn:
        version = version or next_version(ws, name)
        if any(v.version == version for v in list_models(ws, name)):
            raise InvalidParameter(
                f"model {name!r} already has a version {version!r}.",
                fix="pass another --version, or leave it out to take the next number.",
            )
        created = time.time()
        conn.execute(
            "INSERT INTO models(name, version, kind, created_at, path, source, card, tags,"
            " description, asset_type, lineage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                version,
                kind,
                created,
                str(path) if path else None,
                source,
                card.model_dump_json(),
                json.dumps(tags or {}),
                description,
                asset_type,
                json.dumps(lineage or {}),
            ),
        )
    return get_model(ws, name, version=version)


def delete_version(conn: sqlite3.Connection, name: str, version: str) -> bool:
    """Remove the workspace row of `name:version` inside the caller's write transaction
    (`with ws.write() as conn:`); the files are the caller's to remove. Returns whether a
    row was there. Catalog versions have no row and are never touched."""
    cur = conn.execute("DELETE FROM models WHERE name = ? AND version = ?", (name, version))
    return cur.rowcount > 0


def model_dir(ws: Workspace, name_or_path: str | Path) -> Path:
    """The checkpoint folder of a local path, or of the latest imported version of a name.

    Raises:
        ModelNotFound: the name has no version with weights in this workspace.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    versions = [v for v in list_models(ws, str(name_or_path)) if v.path is not None]
    if not versions:
        get_model(ws, str(name_or_path))  # raises ModelNotFound for unknown names
        raise ModelNotFound(
            f"model {name_or_path!r} has no weights in this workspace yet.",
            fix=f"import it first: chattune model import {name_or_path}",
        )
    return max(versions, key=lambda v: v.created_at).path  # type: ignore[return-value]


def load_tokenizer(ws: Workspace, name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model name in the workspace or a folder, chat template or not (the
    caller says what it needs); `models.loading.load_tokenizer` loads it."""
    return loading.load_tokenizer(model_dir(ws, name_or_path), chat_template=False)
