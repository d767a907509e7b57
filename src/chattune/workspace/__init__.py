"""The workspace: one folder holding metadata, artifacts and the MLflow tracking store."""

from chattune.workspace.layout import LAYOUT_VERSION, Workspace, default_home
from chattune.workspace.locks import file_lock

__all__ = ["LAYOUT_VERSION", "Workspace", "default_home", "file_lock"]
