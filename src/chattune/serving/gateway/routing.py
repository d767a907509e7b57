"""How the gateway picks where a request goes: deployment, instance, mirror, limits.

Everything here runs on the gateway's event loop only (one thread), so the in-flight counts
are plain counters without locks; the config they read is a snapshot taken once per request.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from chattune.errors import (
    InvalidRequest,
    RouteNotFound,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamFailed,
)
from chattune.serving.gateway.config import DeploymentTarget, GatewayConfig
from chattune.serving.headers import DEPLOYMENT_HEADER

RETRY_AFTER_BUSY_S = 1  # 429: in-flight requests finish in about a request's time
RETRY_AFTER_STARTING_S = 10  # 503: Azure's default readiness probe period


@dataclass(frozen=True)
class Route:
    """Where one request goes.

    Args:
        target: the deployment that answers the client.
        mirror: the shadow deployment that also gets a copy, or None.
    """

    target: DeploymentTarget
    mirror: DeploymentTarget | None = None


def choose_route(
    config: GatewayConfig, header: str | None, rng: random.Random, model: str | None = None
) -> Route:
    """Pick the deployment for a request, as Azure does.

    The `azureml-model-deployment` header names the deployment and bypasses the split (a
    deployment with 0% traffic may be named; such requests are never mirrored). So does an
    OpenAI request's `model` naming a deployment (or a LoRA deployment's adapter); `model`
    naming the endpoint, or left out, follows the split. Otherwise a deployment is drawn by
    the traffic weights, and the mirror deployment gets a copy with its percent as
    probability.

    Raises:
        RouteNotFound: the named deployment or `model` does not exist, or no deployment has
            traffic (404, listing the names).
        InvalidRequest: the header and `model` name different deployments (400).
    """
    named = model_deployment(config, model)
    if header and named is not None and named != header:
        raise InvalidRequest(
            f"`model` '{model}' is deployment '{named}', but the {DEPLOYMENT_HEADER} header "
            f"names '{header}'.",
            fix=f"name one deployment: drop the header, or set `model` to '{header}' or to "
            f"the endpoint's name '{config.endpoint}'.",
            param="model",
        )
    header = header or named
    if header:
        target = config.deployments.get(header)
        if target is None:
            names = ", ".join(sorted(config.deployments)) or "(none)"
            raise RouteNotFound(
                f"deployment '{header}' not found in endpoint '{config.endpoint}'; its "
                f"deployments are: {names}.",
                fix=f"set the `{DEPLOYMENT_HEADER}` header to one of them, or leave it out "
                "to follow the traffic split.",
                param=DEPLOYMENT_HEADER,
            )
        return Route(target)

    live = [(name, pct) for name, pct in config.traffic.items() if pct > 0]
    live = [(name, pct) for name, pct in live if name in config.deployments]
    if not live:
        raise RouteNotFound(
            f"no deployment with traffic in endpoint '{config.endpoint}'.",
            fix=f"give a deployment traffic (`chattune endpoint update {config.endpoint} "
            f"--traffic NAME=100`) or name one in the `{DEPLOYMENT_HEADER}` header.",
        )
    names, weights = zip(*live, strict=True)
    target = config.deployments[rng.choices(names, weights=weights)[0]]
    return Route(target, _draw_mirror(config, rng))


def model_deployment(config: GatewayConfig, model: str | None) -> str | None:
    """The deployment an OpenAI request's `model` names: a deployment's name or its LoRA
    adapter's; None for the endpoint's name or no `model` (the traffic split decides).

    Raises:
        RouteNotFound: any other name (404, listing the valid ones).
    """
    if model is None or (model == config.endpoint and model not in config.deployments):
        return None
    if model in config.deployments:
        return model
    for name, target in config.deployments.items():
        if target.adapter == model:
            return name
    names = sorted(
        {*config.deployments, *(t.adapter for t in config.deployments.values())} - {None}
    )
    raise RouteNotFound(
        f"model '{model}' not found in endpoint '{config.endpoint}'; its models are "
        f"{', '.join(names) or '(none)'} (its deployments), or '{config.endpoint}' (the "
        "endpoint: its traffic split).",
        fix="set `model` to one of them (GET /v1/models lists the deployments).",
        param="model",
    )


def _draw_mirror(config: GatewayConfig, rng: random.Random) -> DeploymentTarget | None:
    for name, pct in config.mirror_traffic.items():
        shadow = config.deployments.get(name)
        # rng.random() is in [0, 1): pct 0 never mirrors, pct 100 always would.
        if shadow is not None and pct > 0 and rng.random() * 100 < pct:
            return shadow
    return None


def check_serving(target: DeploymentTarget) -> None:
    """Refuse a deployment that cannot answer now.

    Raises:
        UpstreamFailed: it failed (with its error).
        ServiceUnavailable: it has no ready instance yet.
    """
    if target.state == "failed":
        reason = target.error or "no reason was recorded"
        raise UpstreamFailed(
            f"deployment '{target.name}' failed: {reason}.",
            fix="read `chattune deployment logs` for it, then update or recreate the deployment.",
            deployment=target.name,
        )
    if not target.instances:
        doing = (
            "is starting: no instance is ready yet"
            if target.state == "creating"
            else "has no ready instance right now (the supervisor restarts an instance that "
            "stopped answering)"
        )
        raise ServiceUnavailable(
            f"deployment '{target.name}' {doing}; retry in a few seconds, or watch it with "
            "`chattune deployment show`.",
            deployment=target.name,
            retry_after_s=RETRY_AFTER_STARTING_S,
        )


class InFlight:
    """Requests in flight per deployment and per instance, and the round-robin turn.

    Counts are keyed by name and URL, so they survive config updates: a request that began
    on the old config still counts against the deployment until it finishes.
    """

    def __init__(self) -> None:
        self._deployments: Counter[str] = Counter()
        self._instances: Counter[str] = Counter()
        self._turns: Counter[str] = Counter()

    def deployment(self, name: str) -> int:
        """Requests in flight on deployment `name` now."""
        return self._deployments[name]

    def reserve(self, target: DeploymentTarget) -> Slot:
        """Take one of the deployment's in-flight slots.

        Raises:
            TooManyRequests: `target.max_in_flight` are in flight (with `Retry-After`).
        """
        if self._deployments[target.name] >= target.max_in_flight:
            raise TooManyRequests(
                f"too many requests: deployment '{target.name}' already has "
                f"{target.max_in_flight} in flight (2 x max_concurrent_requests_per_instance "
                f"{target.max_concurrent_requests_per_instance} x instance_count "
                f"{target.instance_count}).",
                fix="retry later, or raise --max-concurrent-requests-per-instance or "
                "--instance-count.",
                deployment=target.name,
                retry_after_s=RETRY_AFTER_BUSY_S,
            )
        self._deployments[target.name] += 1
        return Slot(self, target)

    def _take_instance(self, target: DeploymentTarget, tried: set[str]) -> str | None:
        free = [url for url in target.instances if url not in tried]
        if not free:
            return None
        least = min(self._instances[url] for url in free)
        # Round robin on ties: look from just after the instance picked last time.
        urls = target.instances
        start = self._turns[target.name] % len(urls)
        for i in range(len(urls)):
            url = urls[(start + i) % len(urls)]
            if url not in tried and self._instances[url] == least:
                self._turns[target.name] = start + i + 1
                self._instances[url] += 1
                return url
        raise AssertionError("unreachable: `free` holds an instance with the least count")

    def _drop(self, counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]


class Slot:
    """One request's hold on a deployment and, once picked, on one of its instances."""

    def __init__(self, owner: InFlight, target: DeploymentTarget) -> None:
        self._owner = owner
        self.target = target
        self.instance: str | None = None
        self.tried: set[str] = set()
        self._released = False

    def next_instance(self) -> str | None:
        """Move to the ready instance with the fewest requests in flight (round robin on
        ties) that this request has not tried yet; None when every one was tried."""
        self._leave_instance()
        self.instance = self._owner._take_instance(self.target, self.tried)
        if self.instance is not None:
            self.tried.add(self.instance)
        return self.instance

    def _leave_instance(self) -> None:
        if self.instance is not None:
            self._owner._drop(self._owner._instances, self.instance)
            self.instance = None

    def release(self) -> None:
        """Give the slot back; safe to call more than once."""
        if self._released:
            return
        self._released = True
        self._leave_instance()
        self._owner._drop(self._owner._deployments, self.target.name)
