"""`MLClient.compute`: get / list / list_sizes / begin_create_or_update / begin_delete."""

from __future__ import annotations

from typing import Any

from chattune.aml._poller import LROPoller
from chattune.aml.entities import AmlCompute, VmSize
from chattune.aml.operations._errors import azure_errors
from chattune.compute.store import (
    create_compute,
    delete_compute,
    get_compute,
    list_computes,
    list_sizes,
)
from chattune.workspace import Workspace


class ComputeOperations:
    """The workspace's computes: `local` (this machine) and the ones created by name."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def get(self, name: str) -> AmlCompute:
        """The compute `name`.

        Raises:
            ResourceNotFoundError: no such compute (the seed then creates it).
        """

        with azure_errors():
            return AmlCompute._from_store(get_compute(self._ws, name))

    def list(self, **_kwargs: Any) -> list[AmlCompute]:
        return [AmlCompute._from_store(c) for c in list_computes(self._ws)]

    def list_sizes(self, location: str | None = None, **_kwargs: Any) -> list[VmSize]:
        """The sizes of this workspace's computes, each with this machine's numbers
        (`.name`, `.gpus`, `.v_cp_us`, `.memory_gb`)."""

        return list_sizes(self._ws)

    def _create(self, compute: AmlCompute) -> AmlCompute:
        with azure_errors():
            created = create_compute(
                self._ws, compute.name, compute.size, replace=True, **compute._spec()
            )
        return AmlCompute._from_store(created)

    def begin_create_or_update(self, compute: AmlCompute, **_kwargs: Any) -> LROPoller[AmlCompute]:
        return LROPoller(lambda: self._create(compute), "compute-create")

    def begin_delete(self, name: str, **_kwargs: Any) -> LROPoller[None]:
        def work() -> None:
            with azure_errors():
                delete_compute(self._ws, name)

        return LROPoller(work, "compute-delete")
