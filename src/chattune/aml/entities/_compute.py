"""Compute: `AmlCompute` (the seed creates one) and `VmSize` (what `list_sizes` returns)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chattune.aml.entities._base import Printable
from chattune.host.machine import VmSize

__all__ = ["AmlCompute", "VmSize"]


@dataclass(repr=False)
class AmlCompute(Printable):
    """As `azure.ai.ml.entities.AmlCompute`: a named compute of a VM size.

    chattune records the name and the size; this machine runs the work (its CPU, RAM and
    GPUs are what `compute.list_sizes()` reports for every size).

    Args:
        name: 2-32 letters, digits or hyphens.
        size: an Azure VM size (`Standard_NC6s_v3`) or `local`.
        min_instances / max_instances / idle_time_before_scale_down / tier: kept as given.

    Example:
        >>> AmlCompute(name="gpu-cluster", size="Standard_NC6s_v3", max_instances=2).size
        'Standard_NC6s_v3'
    """

    name: str
    size: str = "local"
    min_instances: int = 0
    max_instances: int = 1
    idle_time_before_scale_down: int | None = None
    tier: str | None = None
    location: str | None = None
    type: str = "amlcompute"
    provisioning_state: str = "Succeeded"
    id: str | None = None

    def __repr__(self) -> str:
        return f"AmlCompute(name={self.name!r}, size={self.size!r})"

    def _spec(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "min_instances": self.min_instances,
                "max_instances": self.max_instances,
                "idle_time_before_scale_down": self.idle_time_before_scale_down,
                "tier": self.tier,
                "location": self.location,
            }.items()
            if v is not None
        }

    @classmethod
    def _from_store(cls, c: Any) -> AmlCompute:
        spec = dict(c.spec)
        return cls(
            name=c.name,
            size=c.size,
            min_instances=int(spec.get("min_instances", 0)),
            max_instances=int(spec.get("max_instances", 1)),
            idle_time_before_scale_down=spec.get("idle_time_before_scale_down"),
            tier=spec.get("tier"),
            location=spec.get("location"),
            type="local" if c.is_local else "amlcompute",
            id=f"azureml:computes/{c.name}",
        )
