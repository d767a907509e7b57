"""Endpoint and deployment operations shared by the CLI and the SDK: deploy a registered
model version, invoke an endpoint with its key."""

from __future__ import annotations

from pathlib import Path

import httpx

from chattune.errors import EndpointError
from chattune.models.store import get_model
from chattune.serving.deployments import Deployment, DeploymentSettings, create_deployment
from chattune.serving.endpoints import get_endpoint
from chattune.workspace import Workspace


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


def deploy(
    ws: Workspace,
    endpoint: str,
    name: str,
    model_ref: str,
    settings: DeploymentSettings,
    *,
    instance_count: int = 1,
    instance_type: str = "local",
    lora_only: bool = False,
) -> tuple[Deployment, float]:
    """Record deployment `name` of a model version under `endpoint` (0% traffic); returns it
    and the endpoint stamp to apply (`control.apply`).

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
        from chattune.models.checkpoint import resolve_checkpoint

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
    return create_deployment(
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
    `azureml-model-deployment` header when `deployment` is given).

    Raises:
        EndpointNotFound: no such endpoint.
        EndpointError: the endpoint did not answer.
    """
    ep = get_endpoint(ws, endpoint)
    headers = {"Authorization": f"Bearer {ep.primary_key}", "Content-Type": "application/json"}
    if deployment:
        headers["azureml-model-deployment"] = deployment
    try:
        return httpx.post(
            ep.scoring_uri, content=body, headers=headers, timeout=timeout_s, trust_env=False
        )
    except httpx.HTTPError as exc:
        raise EndpointError(
            f"endpoint {endpoint!r} did not answer at {ep.scoring_uri} ({exc}).",
            fix="check `chattune endpoint show` (state); `chattune up` starts stopped endpoints.",
        ) from exc
