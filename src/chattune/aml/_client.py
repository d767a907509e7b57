"""`MLClient`: the seed's entry point, on a chattune workspace folder.

A workspace is a folder (`workspace_path`, else `$CHATTUNE_HOME`, else `~/.chattune`);
`subscription_id`, `resource_group_name` and `workspace_name` are recorded, not looked up.
`MLClient(credential, registry_name="azureml")` is the built-in catalog: its `models` are
the model cards, its `components` the `chat_completion_pipeline`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from chattune.aml._poller import LROPoller
from chattune.aml.entities import AmlCompute, ManagedOnlineDeployment, ManagedOnlineEndpoint, Model
from chattune.aml.exceptions import ValidationException
from chattune.aml.operations.components import ComponentOperations
from chattune.aml.operations.compute import ComputeOperations
from chattune.aml.operations.jobs import JobOperations
from chattune.aml.operations.models import ModelOperations
from chattune.workspace import Workspace

CONFIG_NAMES = ("config.json", os.path.join(".azureml", "config.json"))


def _find_config(path: str | os.PathLike[str] | None, file_name: str | None) -> Path:
    start = Path(path or ".").expanduser().resolve()
    if start.is_file():
        return start
    names = [file_name] if file_name else list(CONFIG_NAMES)
    searched = []
    for folder in (start, *start.parents):
        for name in names:
            candidate = folder / name
            searched.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise ValidationException(
        f"could not find a workspace config.json in {start} or its parents.",
        fix='write config.json with {"subscription_id": ..., "resource_group": ..., '
        '"workspace_name": ...} (optionally "chattune_home": FOLDER), or construct '
        "MLClient(credential, subscription_id, resource_group_name, workspace_name).",
    )


class MLClient:
    """As `azure.ai.ml.MLClient`: models, compute, components, jobs, online endpoints and
    deployments of one chattune workspace (or the built-in registry).

    Args:
        credential: any object (see `chattune.identity`); chattune needs no login.
        subscription_id / resource_group_name / workspace_name: recorded as given.
        registry_name: "azureml" gives the catalog (models and the component).
        workspace_path: the workspace folder (default `$CHATTUNE_HOME` or `~/.chattune`).

    Example:
        >>> ml = MLClient(DefaultAzureCredential(), "sub", "rg", "ws")
        >>> ml.compute.get("local").size
        'local'
    """

    def __init__(
        self,
        credential: Any = None,
        subscription_id: str | None = None,
        resource_group_name: str | None = None,
        workspace_name: str | None = None,
        registry_name: str | None = None,
        *,
        workspace_path: str | os.PathLike[str] | None = None,
        **_kwargs: Any,
    ) -> None:
        self.credential = credential
        self.subscription_id = subscription_id
        self.resource_group_name = resource_group_name
        self.workspace_name = workspace_name
        self.registry_name = registry_name
        self._ws = Workspace.open(workspace_path)
        self.models = ModelOperations(self._ws, registry=registry_name)
        self.components = ComponentOperations()
        self.compute = ComputeOperations(self._ws)
        self.jobs = JobOperations(self._ws)
        self._online: Any = None

    @classmethod
    def from_config(
        cls,
        credential: Any = None,
        *,
        path: str | os.PathLike[str] | None = None,
        file_name: str | None = None,
        **kwargs: Any,
    ) -> MLClient:
        """A client for the workspace named by a `config.json` (found in `path` or the
        working directory, or a parent, also under `.azureml/`).

        Raises:
            ValidationException: no config file found, or it is not valid JSON.
        """
        found = _find_config(path, file_name)
        try:
            cfg = json.loads(found.read_text())
        except (OSError, ValueError) as exc:
            raise ValidationException(
                f"{found} is not a valid workspace config ({exc}).", fix="fix the JSON."
            ) from exc
        home = cfg.get("chattune_home")
        return cls(
            credential,
            cfg.get("subscription_id"),
            cfg.get("resource_group") or cfg.get("resource_group_name"),
            cfg.get("workspace_name"),
            workspace_path=(found.parent / home) if home else kwargs.pop("workspace_path", None),
            **kwargs,
        )

    @property
    def workspace_path(self) -> Path:
        return self._ws.root

    @property
    def online_endpoints(self) -> Any:
        return self._online_ops()[0]

    @property
    def online_deployments(self) -> Any:
        return self._online_ops()[1]

    def _online_ops(self) -> tuple[Any, Any]:
        if self._online is None:
            from chattune.aml.operations.online import (
                OnlineDeploymentOperations,
                OnlineEndpointOperations,
            )

            self._online = (
                OnlineEndpointOperations(self._ws),
                OnlineDeploymentOperations(self._ws),
            )
        return self._online

    def begin_create_or_update(self, entity: Any, **kwargs: Any) -> LROPoller[Any]:
        """Create or update a compute, an online endpoint or deployment (or a model)."""
        if isinstance(entity, AmlCompute):
            return self.compute.begin_create_or_update(entity, **kwargs)
        if isinstance(entity, ManagedOnlineEndpoint):
            return self.online_endpoints.begin_create_or_update(entity, **kwargs)
        if isinstance(entity, ManagedOnlineDeployment):
            return self.online_deployments.begin_create_or_update(entity, **kwargs)
        if isinstance(entity, Model):
            return LROPoller(lambda: self.models.create_or_update(entity), "model-register")
        raise ValidationException(
            f"begin_create_or_update does not take a {type(entity).__name__}.",
            fix="pass an AmlCompute, ManagedOnlineEndpoint, ManagedOnlineDeployment or Model.",
        )

    def create_or_update(self, entity: Any, **kwargs: Any) -> Any:
        return self.begin_create_or_update(entity, **kwargs).result()

    def __repr__(self) -> str:
        where = f"registry={self.registry_name!r}" if self.registry_name else f"{self._ws.root}"
        return f"MLClient({where})"
