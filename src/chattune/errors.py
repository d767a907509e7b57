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
