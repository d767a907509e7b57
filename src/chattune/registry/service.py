"""Registering, deleting and tracing model versions (workflow step 6).

`register_model` is what `chattune model register` and the SDK's `models.create_or_update`
call; a registered version is immutable: its files live in `models/<name>/<version>/` of the
workspace and nothing changes them until the version is deleted. A registered folder is
copied, never linked or changed; only files chattune owns are hard-linked (`files.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from chattune.errors import InvalidParameter, ModelInUse, PathOutsideWorkspace
from chattune.models.store import (
    ModelVersion,
    add_version,
    delete_version,
    get_model,
    list_models,
    next_version,
)
from chattune.registry.files import place_tree, remove_tree
from chattune.registry.source import parse_asset_type, resolve
from chattune.workspace import Workspace, file_lock
from chattune.workspace.names import MODEL_NAME, MODEL_VERSION

Log = Callable[[str], None]


def _names_lock(ws: Workspace, name: str) -> Any:
    # Shared with `chattune model import`: the versions and folders of one name are handed
    # out one registration or import at a time.
    return file_lock(ws.lock_path(f"import-{name}"))


def _owned(ws: Workspace) -> tuple[Path, ...]:
    """The folders whose files chattune wrote itself: versions, jobs and step outputs."""
    return (ws.models_dir, ws.jobs_dir, ws.root / "cache")


def register_model(
    ws: Workspace,
    *,
    name: str,
    path: str,
    type: str,  # Azure's Model(type=...)
    version: str | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    log: Log = lambda _msg: None,
) -> ModelVersion:
    """Register a model folder or a job's output as a new, immutable version of `name`.

    Args:
        name: the model name (letters, digits, '.', '_', '-').
        path: a folder, or `jobs/<job>/outputs/<output>` / `azureml://jobs/<job>/outputs/
            <output>` (outputs `pytorch_model_folder`, `mlflow_model_folder`, and
            `trained_model` = `mlflow_model_folder`).
        type: `mlflow_model` or `custom_model` (also `AssetTypes`-style spellings).
        version: any version string (the seed uses a timestamp); None = the next number.
        description: free text; default says where the model came from.
        tags: string key-values kept with the version.
        log: called with a line of progress.

    Returns:
        The new version, with its lineage.

    Raises:
        InvalidParameter: a bad name, version, type or path, a duplicate version, or a job
            that is not Completed or lacks the output (each message lists what exists).
        JobNotFound: no such job.

    Example:
        >>> register_model(ws, name="smol-chat", path="azureml://jobs/j1/outputs/trained_model",
        ...                type="mlflow_model", version="1732550400")  # doctest: +SKIP
    """
    asset_type = parse_asset_type(type)
    MODEL_NAME.check(name)
    if version is not None:
        MODEL_VERSION.check(version)
    bad_tags = [k for k, v in (tags or {}).items() if not isinstance(v, str) or not k]
    if bad_tags:
        raise InvalidParameter(
            f"tags {', '.join(map(repr, bad_tags))} must have a name and a string value.",
            fix="write tags as --tag key=value.",
        )
    source = resolve(ws, path, asset_type)
    lineage = source.lineage
    if not description:
        description = (
            f"{lineage['base_model']['name']}:{lineage['base_model']['version']} fine-tuned by "
            f"job {lineage['job']}"
            if lineage.get("source") == "job"
            else f"registered from {source.folder}"
        )
    with _names_lock(ws, name):
        version = version or next_version(ws, name)
        existing = [v.version for v in list_models(ws, name)]
        if version in existing:
            raise InvalidParameter(
                f"model {name!r} already has a version {version!r}; a registered version is "
                "never replaced.",
                fix=f"pass another --version (existing: {', '.join(existing)}), or leave it out "
                f"to take the next number ({next_version(ws, name)}).",
            )
        final = ws.inside(ws.models_dir / name / version, under=ws.models_dir)
        if final.exists():  # no row names it: left by a registration killed before its row
            log(f"removing {final}, left by an interrupted registration")
            remove_tree(final)
        log(f"placing {source.folder} at {final}")
        placed = place_tree(source.folder, final, owned=_owned(ws))
        log(
            f"{placed.files} files ({placed.bytes / 1e6:.1f} MB): {placed.linked} hard-linked, "
            f"{placed.cloned} cloned, {placed.copied} copied"
        )
        try:
            mv = add_version(
                ws,
                name=name,
                version=version,
                kind="registered",
                card=source.card,
                path=final,
                source=lineage.get("uri") or str(source.folder),
                description=description,
                tags=tags,
                asset_type=asset_type,
                lineage={**lineage, "files": placed.to_dict()},
            )
        except BaseException:
            remove_tree(final)
            raise
    log(f"registered {mv.name}:{mv.version} ({asset_type})")
    return mv


def delete_model(
    ws: Workspace,
    name: str,
    version: str | None = None,
    *,
    label: str | None = None,
    log: Log = lambda _msg: None,
) -> ModelVersion:
    """Delete one workspace version of `name` (by `version`, or `label="latest"`): its row
    and its files in the workspace. A folder outside the workspace's models folder (a row
    written before names were checked) is never touched: `log` says it was left.

    Returns:
        The version that was deleted.

    Raises:
        InvalidParameter: neither version nor label given, or a catalog version.
        ModelNotFound: no such name or version.
        ModelInUse: a deployment serves it; the message names each endpoint/deployment.
    """
    if version is None and label is None:
        raise InvalidParameter(
            f"say which version of {name!r} to delete.",
            fix="pass --version V, or --label latest.",
        )
    with _names_lock(ws, name):
        mv = get_model(ws, name, version=version, label=label)
        if mv.kind == "catalog":
            raise InvalidParameter(
                f"{mv.name}:{mv.version} is a built-in catalog card; catalog versions cannot be "
                "deleted.",
                fix="delete a version you imported or registered (chattune model list shows "
                "each version's kind).",
            )
        with ws.write() as conn:
            users = conn.execute(
                "SELECT endpoint, name FROM deployments WHERE model_name = ? AND model_version = ?"
                " ORDER BY endpoint, name",
                (mv.name, mv.version),
            ).fetchall()
            if users:
                named = ", ".join(
                    f"deployment {r['name']!r} of endpoint {r['endpoint']!r}" for r in users
                )
                first = users[0]
                raise ModelInUse(
                    f"model {mv.name}:{mv.version} is in use by {named}.",
                    fix="delete the deployment first (chattune deployment delete --endpoint "
                    f"{first['endpoint']} --name {first['name']}), or update it to another "
                    "model version.",
                )
            delete_version(conn, mv.name, mv.version)
        if mv.path is not None:
            try:
                ws.inside(mv.path, under=ws.models_dir)
            except PathOutsideWorkspace as exc:
                log(
                    f"left the files of {mv.name}:{mv.version}: {exc.message} Remove them "
                    "yourself if nothing else needs them."
                )
            else:
                remove_tree(mv.path)
    return mv


def model_lineage(
    ws: Workspace, name: str, version: str | None = None, *, label: str | None = None
) -> dict[str, Any]:
    """Where a version came from: for a registered job output, the job, the base model and
    version, the data files with their sha256, the job's final metrics and the output;
    for a registered folder, the folder; for other versions, their kind and source.

    Raises:
        InvalidParameter, ModelNotFound: as `get_model`.
    """
    mv = get_model(ws, name, version=version, label=label)
    if mv.lineage:
        return mv.lineage
    return {"source": mv.kind, "from": mv.source}
