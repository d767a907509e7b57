"""Data and model assets: `Input`, `Output`, `Model`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chattune.aml.entities._base import Printable


@dataclass(repr=False)
class Input(Printable):
    """As `azure.ai.ml.Input`: a file or folder given to a job.

    Args:
        type: "uri_file" (a data file) or "uri_folder".
        path: a local path (relative paths are taken from the working directory when the job
            is submitted) or a job output `azureml://jobs/<job>/outputs/<name>`.

    Example:
        >>> Input(type="uri_file", path="./data/train_sft.jsonl").type
        'uri_file'
    """

    type: str = "uri_file"
    path: str | None = None
    mode: str | None = None
    description: str | None = None

    def __repr__(self) -> str:
        return f"Input(type={self.type!r}, path={self.path!r})"


@dataclass(repr=False)
class Output(Printable):
    """As `azure.ai.ml.Output`: a job output, addressable as `azureml://jobs/J/outputs/N`."""

    type: str = "uri_folder"
    path: str | None = None
    mode: str | None = None
    description: str | None = None

    def __repr__(self) -> str:
        return f"Output(type={self.type!r}, path={self.path!r})"


@dataclass(repr=False)
class Model(Printable):
    """As `azure.ai.ml.entities.Model`: a model version to register, or one that exists.

    Args:
        path: a folder, or a job output `azureml://jobs/<job>/outputs/<output>`.
        type: `AssetTypes.MLFLOW_MODEL` ("mlflow_model") or "custom_model".
        name: the model name.
        version: any version string (the seed uses a timestamp); None = the next number.
        description: free text.
        tags: string key-values.

    Example:
        >>> Model(path="azureml://jobs/j1/outputs/trained_model", type="mlflow_model",
        ...       name="smol-chitchat", version="1").name
        'smol-chitchat'
    """

    path: str | None = None
    type: str = "custom_model"
    name: str | None = None
    version: str | None = None
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    creation_context: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version!r}, id={self.id!r})"

    @classmethod
    def _from_version(cls, mv: Any) -> Model:
        """The entity for a `chattune.models.store.ModelVersion`."""
        lineage = getattr(mv, "lineage", None) or {}
        return cls(
            path=str(mv.path) if mv.path else None,
            type="mlflow_model" if mv.path and (mv.path / "MLmodel").exists() else "custom_model",
            name=mv.name,
            version=mv.version,
            description=mv.description or mv.card.description,
            tags=dict(mv.tags),
            properties={"kind": mv.kind, **({"lineage": lineage} if lineage else {})},
            id=mv.id,
            creation_context={"created_at": mv.created_at.isoformat()},
        )
