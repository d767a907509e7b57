"""Domain exceptions: the one error channel of chattune.

Every error says what went wrong and what to do about it. Services raise these; the edges
(the CLI, later the HTTP server) map them once to an exit code or a status code.
"""

from __future__ import annotations


class ChattuneError(Exception):
    """Base of every error chattune raises on purpose.

    Args:
        message: what went wrong, naming the field, file, row or flag involved.
        fix: what the user should do about it (a command, a flag, a value).
    """

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} Fix: {self.fix}" if self.fix else self.message


class WorkspaceError(ChattuneError):
    """The workspace folder or its metadata database cannot be used."""


class PathOutsideWorkspace(WorkspaceError):
    """A path chattune was about to write or delete lies outside the workspace folder (a
    `..`, an absolute path or a symbolic link leading out of it)."""


class ModelNotFound(ChattuneError):
    """No model (card, imported or registered) with that name, version or label."""


class ModelImportError(ChattuneError):
    """A model source could not be turned into a plain safetensors checkpoint."""


class HubUnreachable(ChattuneError):
    """The Hugging Face Hub cannot be reached (no network or blocked)."""


class ComputeNotFound(ChattuneError):
    """No compute with that name in the workspace."""


class DatasetError(ChattuneError):
    """A dataset cannot be downloaded, read or converted."""


class DatasetInvalid(DatasetError):
    """Rows of a dataset break the conversation schema."""

    exit_code = 1


class InvalidParameter(ChattuneError):
    """A parameter has a value outside what it accepts."""


class ModelInUse(ChattuneError):
    """A model version cannot be deleted: a deployment serves it."""


class EndpointNotFound(ChattuneError):
    """No online endpoint with that name in the workspace."""


class DeploymentNotFound(ChattuneError):
    """No deployment with that name under the endpoint."""


class DeploymentFailed(ChattuneError):
    """A deployment did not become ready (the reason comes from its log)."""


class EndpointError(ChattuneError):
    """An endpoint or deployment operation was refused (bad name, traffic, settings)."""


# -- errors of one HTTP request (the gateway and the model server) ------------------------------
# `serving/http_errors.py` maps each class to its status code once; services only raise these.


class RequestError(ChattuneError):
    """A request to an endpoint or a model server was refused or could not be answered.

    Args:
        message: what went wrong, naming the field or header at fault.
        fix: what the caller should do about it.
        param: the request field or header at fault, if any (the envelope's `param`).
        deployment: the deployment the request was routed to, if any (sent back in the
            `azureml-model-deployment` header, as Azure does).
        retry_after_s: seconds after which a retry may succeed (the `Retry-After` header).
    """

    def __init__(
        self,
        message: str,
        fix: str | None = None,
        *,
        param: str | None = None,
        deployment: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, fix)
        self.param = param
        self.deployment = deployment
        self.retry_after_s = retry_after_s


class InvalidRequest(RequestError):
    """The request's body, field or header is malformed or out of range (HTTP 400)."""


class AuthenticationFailed(RequestError):
    """The endpoint key is missing or wrong (HTTP 401)."""


class RouteNotFound(RequestError):
    """No deployment to send the request to: an unknown name, or none has traffic (404)."""


class RequestTimeout(RequestError):
    """The request ran past its deadline (`request_timeout_ms`); the generation stopped (408)."""


class RequestTooLarge(RequestError):
    """The request body is over the endpoint's limit (HTTP 413)."""


class UpstreamFailed(RequestError):
    """The model server behind the gateway refused, died or failed the request (HTTP 424)."""


class TooManyRequests(RequestError):
    """The deployment already has its limit of requests in flight (HTTP 429)."""


class ClientDisconnected(RequestError):
    """The client went away before the answer; the work was stopped (499, never received)."""


class ServiceUnavailable(RequestError):
    """The model is loading, or no instance of the deployment is ready yet (HTTP 503)."""


class EngineError(ChattuneError):
    """An unexpected exception (a bug, a kernel failure) ended one request's generation on
    the engine thread; the engine goes on with the other requests. The one error class that
    is a server error (HTTP 500): it wraps what nobody raised on purpose."""
