"""What an endpoint's gateway needs to route a request: the contract between the supervisor,
which builds it from the workspace database and the instances it runs, and the gateway,
which only reads it.

A `GatewayConfig` is immutable; the supervisor swaps in a new one whenever keys, traffic,
deployments or instance health change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

AZURE_REQUEST_TIMEOUT_MS = 5_000  # Azure's default `request_timeout_ms`
MAX_REQUEST_TIMEOUT_MS = 180_000  # and its maximum
MAX_BODY_BYTES = 1_572_864  # 1.5 MiB, Azure's online-endpoint payload limit


@dataclass(frozen=True)
class DeploymentTarget:
    """One deployment as the gateway sees it.

    Args:
        name: the deployment name (what `azureml-model-deployment` names).
        instances: base URLs (`http://127.0.0.1:PORT`) of the instances that are ready now.
        instance_count: instances the deployment should have (ready or not): the 429 limit
            is 2 x `max_concurrent_requests_per_instance` x `instance_count`, as in Azure.
        request_timeout_ms: after this the gateway answers 408 and the generation stops.
        max_concurrent_requests_per_instance: Azure's request setting (default 1).
        adapter: for a LoRA-only deployment, the adapter name sent to the shared model
            server in the `x-chattune-adapter` header; None for a full model.
        state: creating | ready | failed (the gateway answers 424 with `error` when failed).
        error: why the deployment failed, from its log.
        score_as_chat: its instances speak only OpenAI's API (vLLM): the gateway answers
            `/score` through their `/v1/chat/completions` and names the served model in
            chat requests (`gateway/score_chat.py`).
        instance_key: what its instances demand in `INSTANCE_AUTH_HEADER` (`serving/keys.py`);
            "" sends none.
    """

    name: str
    instances: tuple[str, ...] = ()
    instance_count: int = 1
    request_timeout_ms: int = AZURE_REQUEST_TIMEOUT_MS
    max_concurrent_requests_per_instance: int = 1
    adapter: str | None = None
    state: str = "creating"
    error: str | None = None
    score_as_chat: bool = False
    instance_key: str = field(default="", repr=False)

    @property
    def max_in_flight(self) -> int:
        return 2 * self.max_concurrent_requests_per_instance * self.instance_count


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway of one endpoint routes by.

    Args:
        endpoint: the endpoint name.
        key_digests: `auth.key_digest` of the primary and the secondary key.
        traffic: deployment -> percent; sums to 0 (nothing served) or 100.
        mirror_traffic: at most one deployment -> percent (<= 50) that gets a shadow copy of
            that share of live requests; its answers are dropped.
        deployments: name -> target.
        max_body_bytes: larger bodies get 413.
    """

    endpoint: str
    key_digests: tuple[bytes, ...] = ()
    traffic: dict[str, int] = field(default_factory=dict)
    mirror_traffic: dict[str, int] = field(default_factory=dict)
    deployments: dict[str, DeploymentTarget] = field(default_factory=dict)
    max_body_bytes: int = MAX_BODY_BYTES


async def current_config(request: Request) -> GatewayConfig:
    """Dependency: the config snapshot this request runs on (FastAPI caches it once per
    request, so a config swapped in mid-request does not change its route). `async`: it runs
    on the event loop, not on FastAPI's thread pool."""
    return request.app.state.gateway.config
