"""Online endpoints and deployments, as `azure.ai.ml.entities` spells them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chattune.aml.entities._base import Printable


@dataclass(repr=False)
class ProbeSettings(Printable):
    """As `azure.ai.ml.entities.ProbeSettings` (Azure's defaults; seconds).

    Example:
        >>> ProbeSettings(initial_delay=600).period
        10
    """

    failure_threshold: int = 30
    success_threshold: int = 1
    timeout: int = 2
    period: int = 10
    initial_delay: int = 10


@dataclass(repr=False)
class OnlineRequestSettings(Printable):
    """As `azure.ai.ml.entities.OnlineRequestSettings`.

    Args:
        request_timeout_ms: a request running longer gets 408 (Azure: default 5000, max
            180000).
        max_concurrent_requests_per_instance: requests one instance works on at once; more
            than 2 x this x instance_count in flight get 429.
        max_queue_wait_ms: kept for compatibility (Azure deprecated it).
    """

    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


@dataclass(repr=False)
class ManagedOnlineEndpoint(Printable):
    """As `azure.ai.ml.entities.ManagedOnlineEndpoint`: an HTTPS endpoint with key auth.

    Set `traffic` (`{"demo": 100}`) and pass it to `MLClient.begin_create_or_update` again to
    route requests, as the seed does.
    """

    name: str
    description: str | None = None
    auth_mode: str = "key"
    tags: dict[str, str] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    mirror_traffic: dict[str, int] = field(default_factory=dict)
    scoring_uri: str | None = None
    openapi_uri: str | None = None
    provisioning_state: str | None = None
    kind: str = "Managed"

    def __repr__(self) -> str:
        return f"ManagedOnlineEndpoint(name={self.name!r}, traffic={self.traffic!r})"


@dataclass(repr=False)
class ManagedOnlineDeployment(Printable):
    """As `azure.ai.ml.entities.ManagedOnlineDeployment`: a model served under an endpoint.

    Args:
        name: the deployment name (3-32 characters, as an endpoint name).
        endpoint_name: the endpoint it belongs to.
        model: a registered model: `Model`, its `.id` (`azureml:NAME:VERSION`) or `NAME:VERSION`.
        instance_type: an Azure SKU, recorded (this machine serves).
        instance_count: model-server processes.
        liveness_probe / readiness_probe: `ProbeSettings`.
        request_settings: `OnlineRequestSettings`.
        engine: what serves it (chattune's): "auto" (vLLM where it is installed and supports
            the model, else the built-in engine), "vllm" or "builtin"; read at creation.
        engine_in_use / engine_reason: which engine runs it, and why (filled by the service).
    """

    name: str
    endpoint_name: str | None = None
    model: Any = None
    instance_type: str | None = None
    instance_count: int = 1
    liveness_probe: ProbeSettings | None = None
    readiness_probe: ProbeSettings | None = None
    request_settings: OnlineRequestSettings | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    provisioning_state: str | None = None
    engine: str = "auto"
    engine_in_use: str | None = None
    engine_reason: str | None = None

    def __repr__(self) -> str:
        return f"ManagedOnlineDeployment(name={self.name!r}, endpoint={self.endpoint_name!r})"


@dataclass(repr=False)
class EndpointAuthKeys(Printable):
    """As `azure.ai.ml.entities.EndpointAuthKeys`: what `online_endpoints.get_keys` returns."""

    primary_key: str
    secondary_key: str

    def __repr__(self) -> str:  # keys are secrets: never in a repr or a log
        return "EndpointAuthKeys(primary_key=***, secondary_key=***)"

    def __str__(self) -> str:
        return repr(self)
