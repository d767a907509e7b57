"""What a registration points at: a folder, or a job's output, and what it is.

`--path` is either a folder or a job output, written `jobs/<job>/outputs/<output>` or
`azureml://jobs/<job>/outputs/<output>` (as the seed writes it). A job's outputs are the
pipeline's `pytorch_model_folder` and `mlflow_model_folder`, plus `trained_model`, the name
the seed's pipeline gives the MLflow folder (`"trained_model": ...outputs.mlflow_model_folder`).

`--type` is Azure's asset type: `mlflow_model` (a folder with an `MLmodel` file) or
`custom_model` (a Hugging Face folder, or a `pytorch_model_folder` with its LoRA in
`adapter/`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.errors import InvalidParameter, ModelNotFound
from chattune.jobs.store import get_job
from chattune.models.card import ModelCard, Source
from chattune.models.importer import sha256_file
from chattune.models.store import AssetType, get_model
from chattune.workspace import Workspace

_JOB_REF = re.compile(r"^(?:azureml://)?jobs/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)/?$")
JOB_OUTPUTS = ("pytorch_model_folder", "mlflow_model_folder")
# The seed's pipeline returns {"trained_model": ...outputs.mlflow_model_folder}.
OUTPUT_ALIASES = {"trained_model": "mlflow_model_folder"}
ASSET_TYPES: tuple[AssetType, ...] = ("mlflow_model", "custom_model")
ADAPTER_SUBDIR = "adapter"  # as chattune.train.convert writes an unmerged LoRA
MLMODEL = "MLmodel"
DATA_SPLITS = ("train", "validation", "test")


@dataclass
class ResolvedSource:
    """A registration's source folder, the card it takes and the lineage it records.

    Attributes:
        folder: the folder whose files are registered (symlinks resolved).
        card: the model card of the registered version (the base model's, for a job output).
        lineage: what the version came from, stored with it.
    """

    folder: Path
    card: ModelCard
    lineage: dict[str, Any] = field(default_factory=dict)


def parse_asset_type(value: str) -> AssetType:
    """Azure's asset type from any of its spellings: `mlflow_model`, `MLFLOW_MODEL`,
    `mlflow-model`, `MLFlowModel` (the REST name), likewise `custom_model`.

    Raises:
        InvalidParameter: another type (e.g. `triton_model`), naming the ones accepted.
    """
    key = re.sub(r"[-_ ]", "", value).lower()
    for t in ASSET_TYPES:
        if key == t.replace("_", ""):
            return t
    raise InvalidParameter(
        f"--type {value!r} is not a model type chattune registers.",
        fix="use --type mlflow_model (a folder with an MLmodel file, e.g. a job's "
        "mlflow_model_folder) or --type custom_model (a Hugging Face folder).",
    )


def job_reference(path: str) -> tuple[str, str] | None:
    """(job, output) when `path` is written `[azureml://]jobs/<job>/outputs/<output>`."""
    m = _JOB_REF.match(path.strip())
    return (m["job"], m["output"]) if m else None


def resolve(ws: Workspace, path: str, asset_type: AssetType) -> ResolvedSource:
    """The folder behind `path`, checked against `asset_type`, with its card and lineage.

    Raises:
        JobNotFound: the job does not exist (the message lists recent jobs).
        InvalidParameter: the job is not Completed, the output is unknown, the folder is
            missing, or it does not hold what `asset_type` needs.
    """
    ref = job_reference(path)
    if ref is not None:
        return _from_job(ws, *ref, asset_type)
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidParameter(
            f"--path {path} is not a folder.",
            fix="pass a model folder, or a job output written jobs/<job>/outputs/<output> "
            "or azureml://jobs/<job>/outputs/<output>.",
        )
    check_folder(folder, asset_type, what=f"folder {folder}")
    return ResolvedSource(
        folder=folder,
        card=_card_of_folder(folder, asset_type),
        lineage={"source": "folder", "registered_from": str(folder)},
    )


def check_folder(folder: Path, asset_type: AssetType, what: str, other: str = "") -> None:
    """Refuse a folder that does not hold what `asset_type` needs.

    Args:
        what: how to name the folder in the message.
        other: for a job output, the sentence naming the output that does fit.
    """
    has_mlmodel = (folder / MLMODEL).is_file()
    if asset_type == "mlflow_model" and not has_mlmodel:
        raise InvalidParameter(
            f"{what} has no {MLMODEL} file, so it is not an mlflow_model.",
            fix=other
            or "point --path at an MLflow model folder (a job's mlflow_model_folder), or "
            "register a Hugging Face folder with --type custom_model.",
        )
    if asset_type == "custom_model":
        if has_mlmodel:
            raise InvalidParameter(
                f"{what} is an MLflow model folder (it holds {MLMODEL}).",
                fix=other or "register it with --type mlflow_model.",
            )
        if not (folder / "config.json").is_file():
            bare = (folder / "adapter_config.json").is_file()
            why = " (it is a bare PEFT adapter: its base is elsewhere)" if bare else ""
            raise InvalidParameter(
                f"{what} has no config.json{why}, so it is not a Hugging Face model folder.",
                fix="point --path at a folder written by save_pretrained, or at a job's "
                "pytorch_model_folder (the base model with its adapter in adapter/).",
            )
        adapter = folder / ADAPTER_SUBDIR
        if adapter.is_dir() and not (adapter / "adapter_config.json").is_file():
            raise InvalidParameter(
                f"{what} has an {ADAPTER_SUBDIR}/ folder without adapter_config.json.",
                fix="put the PEFT adapter (save_pretrained of the PeftModel) there, or remove "
                "the folder.",
            )


def checkpoint_dir(folder: Path, asset_type: AssetType) -> Path:
    """The Hugging Face checkpoint inside a model folder: `model/` of an MLflow folder
    (as `mlflow.transformers.save_model` writes it), else the folder itself."""
    return folder / "model" if asset_type == "mlflow_model" else folder


def _card_of_folder(folder: Path, asset_type: AssetType) -> ModelCard:
    """A card read from the folder's own config.json (no base model is known)."""
    ckpt = checkpoint_dir(folder, asset_type)
    try:
        cfg = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidParameter(
            f"cannot read the model's config.json in {ckpt} ({exc}).",
            fix="register a folder written by save_pretrained or mlflow.transformers.save_model.",
        ) from exc
    tokenizer = folder / "components" / "tokenizer" if asset_type == "mlflow_model" else folder
    return ModelCard.from_hf_config(
        folder.name,
        cfg,
        source=Source(kind="local", path=str(folder)),
        origin=f"registered from {folder}",
        tokenizer=str(tokenizer),
    )


def _from_job(ws: Workspace, job_name: str, output: str, asset_type: AssetType) -> ResolvedSource:
    job = get_job(ws, job_name)  # JobNotFound lists recent jobs
    if job.status != "Completed":
        raise InvalidParameter(
            f"job {job_name!r} is {job.status}, not Completed: it has no model to register.",
            fix=f"wait for it (chattune job stream {job_name})"
            + (f"; it failed: {job.error}" if job.error else "")
            + ", or register another job's output (chattune job list).",
        )
    aliases = {**OUTPUT_ALIASES, **getattr(job.spec, "outputs", {})}
    names = list(dict.fromkeys([*job.outputs, *(a for a in aliases if aliases[a] in job.outputs)]))
    real = aliases.get(output, output)
    if real not in job.outputs:
        listed = ", ".join(
            n + (f" (= {aliases[n]})" if n in aliases and n not in job.outputs else "")
            for n in names
        )
        raise InvalidParameter(
            f"job {job_name!r} has no output {output!r}.",
            fix=f"its outputs are {listed or 'none'}: use jobs/{job_name}/outputs/<one of them>.",
        )
    folder = Path(job.outputs[real]).resolve()
    if not folder.is_dir():
        raise InvalidParameter(
            f"output {real} of job {job_name!r} ({folder}) no longer exists.",
            fix=f"run the job again to rebuild it (chattune job resume {job_name} or a new job).",
        )
    fits = [n for n in names if _fits(Path(job.outputs[aliases.get(n, n)]), asset_type)]
    own = [t for t in ASSET_TYPES if _fits(folder, t)]
    other = (
        f"use jobs/{job_name}/outputs/{fits[-1]} (output {' / '.join(fits)} is the job's "
        f"{asset_type})" + (f", or register {output} with --type {own[0]}." if own else ".")
        if fits
        else ""
    )
    check_folder(folder, asset_type, what=f"output {output} of job {job_name!r}", other=other)
    base = _base_model(ws, job)
    lineage = _job_lineage(ws, job, output, real, base)
    card = base.get("card")
    if card is None:  # the base version was deleted: the card comes from the weights
        card = _card_of_folder(folder, asset_type)
        lineage["base_model"]["note"] = "no longer in the workspace; card read from the model"
    return ResolvedSource(folder=folder, card=card, lineage=lineage)


def _fits(folder: Path, asset_type: AssetType) -> bool:
    try:
        check_folder(folder, asset_type, what="")
    except InvalidParameter:
        return False
    return True


def _base_model(ws: Workspace, job: Any) -> dict[str, Any]:
    """The model the job fine-tuned, as its model-import step resolved it, with its card
    (None when that version has been deleted since)."""
    state = job.steps.get("model_import", {}).get("state", {})
    name = state.get("model_name")
    version = state.get("model_version")
    if name is None:  # resolved before the job recorded it: the spec's NAME[:VERSION]
        name, _, version = job.spec.model.partition(":")
    try:
        mv = get_model(ws, name, version=version or None)
    except ModelNotFound:
        return {"name": name, "version": version or None, "card": None}
    return {"name": mv.name, "version": mv.version, "card": mv.card}


def _job_lineage(
    ws: Workspace, job: Any, output: str, real: str, base: dict[str, Any]
) -> dict[str, Any]:
    validation = job.steps.get("validation", {}).get("state", {}).get("validation", {})
    data: dict[str, Any] = {}
    for split in DATA_SPLITS:
        path = getattr(job.spec, f"{split}_file")
        if path is None:
            continue
        recorded = validation.get(split, {})
        entry: dict[str, Any] = {"path": str(path), "sha256": recorded.get("sha256")}
        if entry["sha256"] is None:
            entry.update(_hash_now(Path(path)))
        if "rows" in recorded:
            entry["rows"] = recorded["rows"]
        data[split] = entry
    return {
        "source": "job",
        "job": job.name,
        "output": output,
        "job_output": real,
        "uri": f"azureml://jobs/{job.name}/outputs/{output}",
        "base_model": {"name": base["name"], "version": base["version"]},
        "data": data,
        "metrics": dict(job.metrics),
        "experiment": job.experiment,
        "mlflow_run_id": job.mlflow_run_id,
    }


def _hash_now(path: Path) -> dict[str, Any]:
    """A job from before hashes were recorded: hash the file as it is now, and say so."""

    try:
        return {"sha256": sha256_file(path), "hashed": "at registration, not by the job"}
    except OSError as exc:
        return {"sha256": None, "hashed": f"not possible: {exc}"}
