"""`MLClient.models`: get / list / create_or_update / delete model versions."""

from __future__ import annotations

from typing import Any

from chattune.aml.entities import Model
from chattune.aml.exceptions import ResourceNotFoundError
from chattune.aml.operations._errors import azure_errors
from chattune.compute.allow import with_tags
from chattune.models.store import get_model, list_models
from chattune.registry import delete_model, register_model
from chattune.workspace import Workspace

# What a registry client sees: the catalog and the models imported into this workspace (the
# base models a job can start from), never the fine-tuned versions registered in it.
REGISTRY_KINDS = ("catalog", "imported")


class ModelOperations:
    """Model versions of a workspace, or of the registry `azureml`: the catalog's cards and
    the base models imported into this workspace (`chattune model import`)."""

    def __init__(self, ws: Workspace, registry: str | None = None) -> None:
        self._ws = ws
        self._registry = registry

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Model:
        """One version of `name` with its tags; `label="latest"` is the newest.

        Raises:
            ResourceNotFoundError: no such model or version (the message lists what exists).
            ValidationException: both version and label, or an unknown label.
        """

        with azure_errors():
            if self._registry is not None:
                versions = [v for v in list_models(self._ws, name) if v.kind in REGISTRY_KINDS]
                if version is not None:
                    versions = [v for v in versions if v.version == version]
                if not versions:
                    names = sorted(
                        {v.name for v in list_models(self._ws) if v.kind in REGISTRY_KINDS}
                    )
                    raise ResourceNotFoundError(
                        f"registry {self._registry!r} has no model {name!r}"
                        + (f" version {version!r}" if version else "")
                        + ".",
                        fix=f"pick one of {', '.join(names)}.",
                    )
                if label not in (None, "latest") or (label and version):
                    get_model(self._ws, name, version=version, label=label)  # its error
                mv = max(versions, key=lambda v: v.created_at)
            else:
                mv = get_model(self._ws, name, version=version, label=label)
            return Model._from_version(with_tags(self._ws, mv))

    def list(self, name: str | None = None, **_kwargs: Any) -> list[Model]:
        """Every model version (of `name`), oldest first."""

        versions = list_models(self._ws, name)
        if self._registry is not None:
            versions = [v for v in versions if v.kind in REGISTRY_KINDS]
        return [Model._from_version(v) for v in versions]

    def create_or_update(self, model: Model, **_kwargs: Any) -> Model:
        """Register `model` (a folder or `azureml://jobs/<job>/outputs/<output>`).

        Raises:
            ResourceNotFoundError: the job or output does not exist.
            ValidationException: a bad type, version or path.
        """

        if self._registry is not None:
            raise ValueError(
                f"the registry {self._registry!r} is read-only: register models "
                "with a workspace MLClient."
            )
        with azure_errors():
            mv = register_model(
                self._ws,
                name=model.name or "",
                path=str(model.path or ""),
                type=model.type,
                version=model.version,
                description=model.description or "",
                tags=dict(model.tags),
            )
        return Model._from_version(mv)

    def delete(self, name: str, version: str | None = None, label: str | None = None) -> None:
        """Delete a registered version; refused while a deployment serves it."""

        with azure_errors():
            mv = get_model(self._ws, name, version=version, label=label)
            delete_model(self._ws, name, mv.version)

    archive = delete
