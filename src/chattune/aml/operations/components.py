"""`MLClient.components`: the registry's `chat_completion_pipeline` component."""

from __future__ import annotations

from typing import Any

from chattune.aml._component import COMPONENT_NAME, COMPONENT_VERSION, PipelineComponent
from chattune.aml.exceptions import ResourceNotFoundError


class ComponentOperations:
    """The components chattune runs: one, `chat_completion_pipeline`."""

    def get(
        self, name: str, version: str | None = None, label: str | None = None, **_kw: Any
    ) -> PipelineComponent:
        """The component `name` (version "1", which is also `latest`).

        Raises:
            ResourceNotFoundError: any other component name or version.
        """
        if name != COMPONENT_NAME:
            raise ResourceNotFoundError(
                f"no component named {name!r}.",
                fix=f"chattune runs the {COMPONENT_NAME!r} component.",
            )
        if version not in (None, COMPONENT_VERSION):
            raise ResourceNotFoundError(
                f"component {name!r} has no version {version!r}.",
                fix=f"use version {COMPONENT_VERSION!r} or label='latest'.",
            )
        return PipelineComponent()

    def list(self, **_kw: Any) -> list[PipelineComponent]:
        return [PipelineComponent()]
