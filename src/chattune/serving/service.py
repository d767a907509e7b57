"""Endpoint and deployment operations, the one service the CLI and the SDK both call.

Each change follows the same steps: write the rows (`endpoints.py`, `deployments.py`), which
stamp the endpoint; make the stamp live (`control.lifecycle.apply`: signal the supervisor and
wait for its acknowledgement); and, for a deployment, wait until it is ready. A change to a
stopped endpoint is saved and applies at `chattune up` (`Applied.live` is False).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from chattune.errors import EndpointError
from chattune.models.checkpoint import resolve_checkpoint
from chattune.models.store import get_model
from chattune.serving import deployments as rows
from chattune.serving import endpoints as endpoint_rows
from chattune.serving.control import lifecycle
from chattune.serving.control.instances import free_port
from chattune.serving.control.vllm import choose_engine
from chattune.serving.deployments import Deployment, DeploymentSettings
from chattune.serving.endpoints import Endpoint, get_endpoint
from chattune.serving.headers import DEPLOYMENT_HEADER
from chattune.workspace import Workspace

DEFAULT_WAIT_S = 900.0
Progress = Callable[[Deployment], None]


@dataclass(frozen=True)
class Applied:
    """Whether a change is live (the supervisor applied it) or saved for `chattune up`."""

    live: bool

    @property
    def note(self) -> str:
        if self.live:
            return "live"
        return "saved; the endpoint is stopped: `chattune up` starts it with this change"


def apply(ws: Workspace, endpoint: str, stamp: float) -> Applied:
    """Make the change that wrote `stamp` live, if the endpoint runs.

    Raises:
        EndpointError: the supervisor died or did not acknowledge in time.
    """
    return Applied(lifecycle.apply(ws, endpoint, stamp))


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """`NAME:VERSION`, `azureml:NAME:VERSION` or `NAME@latest` -> (name, version or None).

    Raises:
        EndpointError: none of those forms.
    """
    ref = ref.removeprefix("azureml:")
    if ref.endswith("@latest"):
        return ref.removesuffix("@latest"), None
    name, sep, version = ref.rpartition(":")
    if not sep or not name or not version:
        raise EndpointError(
            f"--model {ref!r} names no version.",
            fix="write --model NAME:VERSION or --model NAME@latest.",
        )
    return name, version


def create_deployment(
    ws: Workspace,
    endpoint: str,
    name: str,
    model_ref: str,
    settings: DeploymentSettings,
    *,
    instance_count: int = 1,
    instance_type: str = "local",
    lora_only: bool = False,
    wait: bool = True,
    timeout_s: float = DEFAULT_WAIT_S,
    on_progress: Progress | None = None,
) -> tuple[Deployment, Applied]:
    """Deploy a registered model version under `endpoint` (0% traffic), make it live and,
    with `wait` on a running endpoint, wait until it is ready.

    Args:
        model_ref: `NAME:VERSION`, `azureml:NAME:VERSION` or `NAME@latest`.
        settings: its settings; `settings.engine` ("auto" | "vllm" | "builtin") picks the
            engine (`control.vllm.choose_engine`), recorded with the reason.
        lora_only: serve the version's LoRA adapter on a base shared with the endpoint's
            other LoRA-only deployments of that base.
        on_progress: called with the deployment's row while waiting.

    Returns:
        The deployment (ready, when waited for) and whether the change is live.

    Raises:
        ModelNotFound: no such model version.
        EndpointError: the version has no weights, `lora_only` on a full model, a bad name.
        EngineUnavailable: `--engine vllm` and vLLM is missing, broken or cannot serve it.
        DeploymentFailed: it failed or did not get ready in `timeout_s`.
    """
    dep, stamp = _record(
        ws, endpoint, name, model_ref, settings, instance_count, instance_type, lora_only
    )
    return _settle(ws, endpoint, dep, stamp, wait, timeout_s, on_progress)


def update_deployment(
    ws: Workspace,
    endpoint: str,
    name: str,
    *,
    instance_count: int | None = None,
    settings: DeploymentSettings | None = None,
    wait: bool = True,
    timeout_s: float = DEFAULT_WAIT_S,
    on_progress: Progress | None = None,
) -> tuple[Deployment, Applied]:
    """Change a deployment's instance count and/or settings (its instances are replaced),
    make it live and, with `wait` on a running endpoint, wait until it is ready again.

    Raises:
        DeploymentNotFound, EndpointError, DeploymentFailed.
    """
    stamp = rows.update_deployment(
        ws, endpoint, name, instance_count=instance_count, settings=settings
    )
    dep = rows.get_deployment(ws, endpoint, name)
    return _settle(ws, endpoint, dep, stamp, wait, timeout_s, on_progress)


def delete_deployment(ws: Workspace, endpoint: str, name: str) -> Applied:
    """Delete a deployment (refused while it has live traffic) and make that live.

    Raises:
        DeploymentNotFound, EndpointError.
    """
    return apply(ws, endpoint, rows.delete_deployment(ws, endpoint, name))


def create_endpoint(
    ws: Workspace,
    name: str,
    *,
    auth_mode: str = "key",
    description: str = "",
    tags: dict[str, str] | None = None,
) -> Endpoint:
    """Create endpoint `name` (two keys, a free port) and start its supervisor; returns once
    its gateway answers. A failed start leaves no row behind.

    Raises:
        EndpointError: a bad name or auth mode, or the supervisor did not start.
    """
    endpoint_rows.create_endpoint(
        ws, name, port=free_port(), auth_mode=auth_mode, description=description, tags=tags
    )
    try:
        lifecycle.spawn_supervisor(ws, name)
        return lifecycle.wait_running(ws, name)
    except BaseException:
        lifecycle.delete_endpoint(ws, name)  # under the endpoint's lock: no watcher restarts it
        raise


def update_traffic(
    ws: Workspace,
    name: str,
    traffic: dict[str, int] | None = None,
    mirror_traffic: dict[str, int] | None = None,
) -> Applied:
    """Replace the live and/or mirror traffic of endpoint `name` and make it live.

    Raises:
        EndpointNotFound, EndpointError: unknown endpoint, or traffic that breaks the rules.
    """
    return apply(ws, name, endpoint_rows.update_traffic(ws, name, traffic, mirror_traffic))


def regenerate_key(ws: Workspace, name: str, key_type: str) -> Applied:
    """Replace the primary or secondary key; the old one is refused once this returns live.

    Raises:
        EndpointNotFound, EndpointError.
    """
    return apply(ws, name, endpoint_rows.regenerate_key(ws, name, key_type))


def delete_endpoint(ws: Workspace, name: str) -> None:
    """Stop every process of endpoint `name`, free its ports, remove it and its deployments.

    Raises:
        EndpointNotFound, EndpointError.
    """
    get_endpoint(ws, name)
    lifecycle.delete_endpoint(ws, name)


def _settle(
    ws: Workspace,
    endpoint: str,
    dep: Deployment,
    stamp: float,
    wait: bool,
    timeout_s: float,
    on_progress: Progress | None,
) -> tuple[Deployment, Applied]:
    applied = apply(ws, endpoint, stamp)
    if wait and applied.live:
        dep = lifecycle.wait_deployment(ws, endpoint, dep.name, timeout_s, on_progress)
    return dep, applied


def _record(
    ws: Workspace,
    endpoint: str,
    name: str,
    model_ref: str,
    settings: DeploymentSettings,
    instance_count: int,
    instance_type: str,
    lora_only: bool,
) -> tuple[Deployment, float]:
    """Record deployment `name` of a model version under `endpoint` (0% traffic); returns it
    and the endpoint stamp to apply.

    Raises:
        ModelNotFound: no such model version.
        EndpointError: the version has no weights, or `lora_only` on a full model.
    """
    model_name, version = parse_model_ref(model_ref)
    mv = get_model(ws, model_name, version=version, label=None if version else "latest")
    if mv.path is None or not Path(mv.path).exists():
        raise EndpointError(
            f"model {mv.name}:{mv.version} has no weights in this workspace.",
            fix="register a trained model (chattune model register) or import one "
            "(chattune model import), then deploy that version.",
        )
    if lora_only:
        ckpt = resolve_checkpoint(Path(mv.path))
        if ckpt.adapter_dir is None:
            raise EndpointError(
                f"--lora-only needs a base model plus a LoRA adapter, and {mv.name}:"
                f"{mv.version} is a full model ({mv.path}).",
                fix="deploy it without --lora-only, or register the job's pytorch_model_folder "
                "of a LoRA run trained with merge_lora_weights=false.",
            )
        settings = settings.model_copy(
            update={"lora_only": True, "base_id": ckpt.base_id, "group": f"lora-{ckpt.base_id[:8]}"}
        )
    choice = choose_engine(
        settings.engine, lora_only=lora_only, model_path=Path(mv.path), workspace_root=ws.root
    )
    settings = settings.model_copy(
        update={"engine_chosen": choice.engine, "engine_reason": choice.reason}
    )
    return rows.create_deployment(
        ws,
        endpoint,
        name,
        model_name=mv.name,
        model_version=mv.version,
        settings=settings,
        instance_count=instance_count,
        instance_type=instance_type,
    )


def invoke(
    ws: Workspace,
    endpoint: str,
    body: bytes,
    *,
    deployment: str | None = None,
    timeout_s: float = 300.0,
) -> httpx.Response:
    """POST `body` to the endpoint's `/score` with its primary key (and the
    `DEPLOYMENT_HEADER` when `deployment` is given).

    Raises:
        EndpointNotFound: no such endpoint.
        EndpointError: the endpoint did not answer, or its primary key is not kept in clear.
    """
    ep = get_endpoint(ws, endpoint)
    key = endpoint_rows.get_key(ws, endpoint, "primary")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment:
        headers[DEPLOYMENT_HEADER] = deployment
    try:
        return httpx.post(
            ep.scoring_uri, content=body, headers=headers, timeout=timeout_s, trust_env=False
        )
    except httpx.HTTPError as exc:
        raise EndpointError(
            f"endpoint {endpoint!r} did not answer at {ep.scoring_uri} ({exc}).",
            fix="check `chattune endpoint show` (state); `chattune up` starts stopped endpoints.",
        ) from exc
