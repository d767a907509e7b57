"""The exceptions the seed's cells meet on Azure, raised by `chattune.aml` in the same places.

Azure raises `azure.core.exceptions.ResourceNotFoundError` for an unknown model, compute,
endpoint or deployment, `azure.ai.ml.exceptions.ValidationException` for a bad argument,
`JobException` from `jobs.stream` when the job failed, and an `HttpResponseError` when a
deployment does not come up. They are chattune errors too: each keeps chattune's message
and fix, and the CLI's handling applies.
"""

from __future__ import annotations

from chattune import errors
from chattune.errors import ChattuneError
from chattune.jobs.store import JobNotFound


class HttpResponseError(ChattuneError):
    """As `azure.core.exceptions.HttpResponseError`: the service refused an operation."""

    def __init__(self, message: str, fix: str | None = None, status_code: int = 400) -> None:
        super().__init__(message, fix)
        self.status_code = status_code
        self.reason = message


class ResourceNotFoundError(HttpResponseError):
    """As `azure.core.exceptions.ResourceNotFoundError`: no such model, compute, job, endpoint."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message, fix, status_code=404)


class ValidationException(ChattuneError, ValueError):
    """As `azure.ai.ml.exceptions.ValidationException`: an argument has a wrong value."""


class JobException(ChattuneError):
    """As `azure.ai.ml.exceptions.JobException`: `jobs.stream` on a job that failed."""


class DeploymentException(HttpResponseError):
    """A deployment did not become ready; the message carries the reason from its log."""


def as_azure(exc: ChattuneError) -> ChattuneError:
    """The Azure-shaped exception for a chattune error (the same message and fix)."""

    not_found = (
        errors.ModelNotFound,
        errors.ComputeNotFound,
        errors.EndpointNotFound,
        errors.DeploymentNotFound,
    )

    if isinstance(exc, (*not_found, JobNotFound)):
        return ResourceNotFoundError(exc.message, exc.fix)
    if isinstance(exc, errors.DeploymentFailed):
        return DeploymentException(exc.message, exc.fix)
    if isinstance(exc, errors.InvalidParameter | errors.EndpointError | errors.ModelInUse):
        return ValidationException(exc.message, exc.fix)
    return exc
