"""`MLClient.online_endpoints` and `MLClient.online_deployments`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from chattune.aml._component import model_reference
from chattune.aml._poller import LROPoller
from chattune.aml.entities import (
    EndpointAuthKeys,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    OnlineRequestSettings,
    ProbeSettings,
)
from chattune.aml.exceptions import HttpResponseError, ValidationException
from chattune.aml.operations._errors import azure_errors
from chattune.errors import DeploymentNotFound, EndpointNotFound
from chattune.serving import service
from chattune.serving.control.lifecycle import supervisor_not_running
from chattune.serving.deployments import (
    DeploymentSettings,
    get_deployment,
    list_deployments,
    validate_settings,
)
from chattune.serving.endpoints import endpoint_dir, get_endpoint, list_endpoints
from chattune.serving.endpoints import get_keys as endpoint_keys
from chattune.workspace import Workspace

DEPLOY_TIMEOUT_S = 1800.0


def _endpoint_entity(ep: Any) -> ManagedOnlineEndpoint:
    return ManagedOnlineEndpoint(
        name=ep.name,
        description=ep.description or None,
        auth_mode=ep.auth_mode,
        tags=dict(ep.tags),
        traffic=dict(ep.traffic),
        mirror_traffic=dict(ep.mirror_traffic),
        scoring_uri=ep.scoring_uri,
        openapi_uri=ep.openapi_uri,
        provisioning_state="Succeeded" if ep.state == "running" else ep.state.capitalize(),
    )


def _deployment_entity(dep: Any) -> ManagedOnlineDeployment:
    s = dep.settings
    states = {"ready": "Succeeded", "failed": "Failed", "creating": "Creating"}
    return ManagedOnlineDeployment(
        name=dep.name,
        endpoint_name=dep.endpoint,
        model=f"azureml:{dep.model_name}:{dep.model_version}",
        instance_type=dep.instance_type,
        instance_count=dep.instance_count,
        liveness_probe=ProbeSettings(**s.liveness_probe.model_dump()),
        readiness_probe=ProbeSettings(**s.readiness_probe.model_dump()),
        request_settings=OnlineRequestSettings(
            request_timeout_ms=s.request_timeout_ms,
            max_concurrent_requests_per_instance=s.max_concurrent_requests_per_instance,
        ),
        provisioning_state=states.get(dep.state, dep.state.capitalize()),
        engine=s.engine,
        engine_in_use=s.engine_chosen,
        engine_reason=s.engine_reason,
    )


def _settings(d: ManagedOnlineDeployment, base: Any = None) -> Any:
    values = (base or DeploymentSettings()).model_dump()
    if base is None:  # the engine is chosen once, at creation
        values["engine"] = d.engine
    if d.request_settings is not None:
        values["request_timeout_ms"] = d.request_settings.request_timeout_ms
        values["max_concurrent_requests_per_instance"] = (
            d.request_settings.max_concurrent_requests_per_instance
        )
    for key in ("liveness_probe", "readiness_probe"):
        probe = getattr(d, key)
        if probe is not None:
            values[key] = dataclasses.asdict(probe)
    return validate_settings(values)


class OnlineEndpointOperations:
    """Online endpoints: create, update traffic, keys, invoke, delete."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _create_or_update(self, endpoint: ManagedOnlineEndpoint) -> ManagedOnlineEndpoint:
        with azure_errors():
            try:
                ep = get_endpoint(self._ws, endpoint.name)
            except EndpointNotFound:
                ep = service.create_endpoint(
                    self._ws,
                    endpoint.name,
                    auth_mode=endpoint.auth_mode,
                    description=endpoint.description or "",
                    tags=dict(endpoint.tags),
                )
            if endpoint.traffic != ep.traffic or endpoint.mirror_traffic != ep.mirror_traffic:
                service.update_traffic(
                    self._ws,
                    endpoint.name,
                    traffic=dict(endpoint.traffic),
                    mirror_traffic=dict(endpoint.mirror_traffic),
                )
            return _endpoint_entity(get_endpoint(self._ws, endpoint.name))

    def begin_create_or_update(
        self, endpoint: ManagedOnlineEndpoint, **_kw: Any
    ) -> LROPoller[ManagedOnlineEndpoint]:
        """Create the endpoint (keys, port, gateway) or apply its `traffic` and
        `mirror_traffic`; the poller's result is the endpoint with its `scoring_uri`."""
        return LROPoller(lambda: self._create_or_update(endpoint), "endpoint-create")

    def get(self, name: str) -> ManagedOnlineEndpoint:
        with azure_errors():
            return _endpoint_entity(get_endpoint(self._ws, name))

    def list(self, **_kw: Any) -> list[ManagedOnlineEndpoint]:
        return [_endpoint_entity(e) for e in list_endpoints(self._ws)]

    def get_keys(self, name: str) -> EndpointAuthKeys:
        """The endpoint's primary and secondary keys, from its owner-only keys file (the
        database keeps only their digests).

        Raises:
            ResourceNotFoundError: no such endpoint.
            ValidationException: a key is not kept in clear; the fix regenerates it.
        """
        with azure_errors():
            keys = endpoint_keys(self._ws, name)
        return EndpointAuthKeys(primary_key=keys.primary_key, secondary_key=keys.secondary_key)

    def begin_regenerate_keys(
        self, name: str, *, key_type: str = "primary", **_kw: Any
    ) -> LROPoller[None]:
        """Replace one key; the old one is refused once the poller is done."""

        def work() -> None:
            with azure_errors():
                service.regenerate_key(self._ws, name, key_type)

        return LROPoller(work, "regenerate-keys")

    def invoke(
        self,
        endpoint_name: str,
        request_file: str | Path | None = None,
        deployment_name: str | None = None,
        **_kw: Any,
    ) -> str:
        """POST `request_file` to the endpoint's scoring URI with its key; the raw text.

        Raises:
            HttpResponseError: the endpoint answered with an error status (its message).
        """
        if request_file is None:
            raise ValidationException("invoke needs request_file.", fix="pass request_file=PATH.")
        path = Path(request_file)
        if not path.is_file():
            raise ValidationException(
                f"request file {path} does not exist.", fix="write the JSON request first."
            )
        with azure_errors():
            r = service.invoke(
                self._ws, endpoint_name, path.read_bytes(), deployment=deployment_name
            )
        if r.is_error:
            raise HttpResponseError(
                f"endpoint {endpoint_name!r} answered {r.status_code}: {r.text}",
                status_code=r.status_code,
            )
        return r.text

    def begin_delete(self, name: str, **_kw: Any) -> LROPoller[None]:
        """Stop every process of the endpoint and remove it."""

        def work() -> None:
            with azure_errors():
                service.delete_endpoint(self._ws, name)

        return LROPoller(work, "endpoint-delete")


class OnlineDeploymentOperations:
    """Deployments of online endpoints."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    def _create_or_update(self, d: ManagedOnlineDeployment) -> ManagedOnlineDeployment:
        if not d.endpoint_name or d.model is None:
            raise ValidationException(
                "a ManagedOnlineDeployment needs endpoint_name and model.",
                fix="pass endpoint_name=... and model=registered_model.id.",
            )
        with azure_errors():
            try:
                current = get_deployment(self._ws, d.endpoint_name, d.name)
            except DeploymentNotFound:
                current = None
            if current is None:
                dep, applied = service.create_deployment(
                    self._ws,
                    d.endpoint_name,
                    d.name,
                    model_reference(d.model),
                    _settings(d),
                    instance_count=d.instance_count,
                    instance_type=d.instance_type or "local",
                    timeout_s=DEPLOY_TIMEOUT_S,
                )
            else:
                dep, applied = service.update_deployment(
                    self._ws,
                    d.endpoint_name,
                    d.name,
                    instance_count=d.instance_count,
                    settings=_settings(d, current.settings),
                    timeout_s=DEPLOY_TIMEOUT_S,
                )
            if not applied.live:  # the poller's result is a ready deployment, or an error
                raise supervisor_not_running(d.endpoint_name, d.name)
        return _deployment_entity(dep)

    def begin_create_or_update(
        self, deployment: ManagedOnlineDeployment, **_kw: Any
    ) -> LROPoller[ManagedOnlineDeployment]:
        """Start the deployment's instances and wait until they are ready.

        The poller raises `DeploymentException` (with the reason from the instance log) when
        the deployment fails.
        """
        return LROPoller(lambda: self._create_or_update(deployment), "deployment-create")

    def get(self, name: str, endpoint_name: str, **_kw: Any) -> ManagedOnlineDeployment:
        with azure_errors():
            return _deployment_entity(get_deployment(self._ws, endpoint_name, name))

    def list(self, endpoint_name: str, **_kw: Any) -> list[ManagedOnlineDeployment]:
        with azure_errors():
            return [_deployment_entity(d) for d in list_deployments(self._ws, endpoint_name)]

    def get_logs(
        self, name: str, endpoint_name: str, lines: int = 100, instance: int = 0, **_kw: Any
    ) -> str:
        """The last `lines` lines of an instance's log."""
        with azure_errors():
            dep = get_deployment(self._ws, endpoint_name, name)
        path = endpoint_dir(self._ws, endpoint_name) / dep.group / f"instance-{instance}.log"
        if not path.is_file():
            return ""
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    def begin_delete(self, name: str, endpoint_name: str, **_kw: Any) -> LROPoller[None]:
        def work() -> None:
            with azure_errors():
                service.delete_deployment(self._ws, endpoint_name, name)

        return LROPoller(work, "deployment-delete")
