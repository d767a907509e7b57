"""Registering job outputs and folders: paths, types, versions, files, lineage, refusals."""

from __future__ import annotations

import errno
import hashlib
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from chattune.errors import InvalidParameter
from chattune.jobs.spec import build_spec
from chattune.jobs.store import JobNotFound, JobRecord, create_job
from chattune.models.store import get_model, list_models
from chattune.registry import files as registry_files
from chattune.registry import model_lineage, register_model
from chattune.registry import service as registry_service
from chattune.workspace import Workspace
from tests.registry.completed_job import LOSSES, METRICS

JOB = "ft-job-1"


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def version_dirs(ws: Workspace, name: str) -> list[str]:
    folder = ws.models_dir / name
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_both_spellings_and_the_trained_model_alias(workspace: Workspace, job: JobRecord) -> None:
    mlflow_out = Path(job.outputs["mlflow_model_folder"])
    a = register_model(
        workspace, name="chat", path=f"jobs/{JOB}/outputs/mlflow_model_folder", type="mlflow_model"
    )
    b = register_model(
        workspace,
        name="chat",
        path=f"azureml://jobs/{JOB}/outputs/trained_model",
        type="MLFLOW_MODEL",
        version="1732550400",
        description="seed-style",
        tags={"dataset": "chats"},
    )
    assert (a.version, b.version) == ("1", "1732550400")
    assert a.type == b.type == "mlflow_model" and a.kind == b.kind == "registered"
    assert a.path == workspace.models_dir / "chat" / "1"
    assert b.path == workspace.models_dir / "chat" / "1732550400"
    # both hold exactly the job's MLflow folder, and it is a genuine MLflow model
    assert tree(a.path) == tree(b.path) == tree(mlflow_out)
    mlmodel = yaml.safe_load((b.path / "MLmodel").read_text())
    assert mlmodel["metadata"]["job"] == JOB and "transformers" in mlmodel["flavors"]
    assert a.lineage["output"] == "mlflow_model_folder"
    assert (b.lineage["output"], b.lineage["job_output"]) == (
        "trained_model",
        "mlflow_model_folder",
    )
    assert b.source == f"azureml://jobs/{JOB}/outputs/trained_model"
    assert (b.description, b.tags) == ("seed-style", {"dataset": "chats"})
    assert a.description == f"{a.lineage['base_model']['name']}:1 fine-tuned by job {JOB}"
    assert get_model(workspace, "chat", label="latest").version == "1732550400"
    assert version_dirs(workspace, "chat") == ["1", "1732550400"]  # no staging left


def test_lineage_names_job_base_data_hashes_and_metrics(
    workspace: Workspace, job: JobRecord
) -> None:
    mv = register_model(
        workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
    )
    base = job.steps["model_import"]["state"]
    lin = model_lineage(workspace, "chat", "1")
    assert lin == mv.lineage
    assert lin["source"] == "job" and lin["job"] == JOB
    assert lin["base_model"] == {"name": base["model_name"], "version": base["model_version"]}
    assert set(lin["data"]) == {"train", "test"}  # the job had no validation file
    for split in ("train", "test"):
        path = getattr(job.spec, f"{split}_file")
        assert lin["data"][split]["path"] == str(path)
        assert lin["data"][split]["sha256"] == sha256(path)
        assert "hashed" not in lin["data"][split]  # recorded by the job's validation step
    assert lin["data"]["train"]["rows"] == 24
    assert lin["metrics"] == {
        **METRICS,
        "train_loss": LOSSES["final_train_loss"],
        "eval_loss": LOSSES["final_eval_loss"],
    }
    # the card is the base model's: serving and `model show` know context and template
    base_card = get_model(workspace, base["model_name"], base["model_version"]).card
    assert mv.card == base_card and mv.card.context_length == 256


def test_data_hash_of_a_job_that_did_not_record_one(workspace: Workspace, job: JobRecord) -> None:
    from chattune.jobs.store import update_step

    state = job.steps["validation"]["state"]
    del state["validation"]["train"]["sha256"]
    update_step(workspace, JOB, "validation", state=state)
    lin = register_model(
        workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
    ).lineage
    assert lin["data"]["train"]["sha256"] == sha256(job.spec.train_file)
    assert lin["data"]["train"]["hashed"] == "at registration, not by the job"


def test_custom_model_keeps_the_unmerged_adapter(workspace: Workspace, job: JobRecord) -> None:
    mv = register_model(
        workspace,
        name="chat-pt",
        path=f"azureml://jobs/{JOB}/outputs/pytorch_model_folder",
        type="custom_model",
    )
    assert mv.type == "custom_model"
    assert (mv.path / "config.json").is_file()
    assert (mv.path / "adapter" / "adapter_config.json").is_file()
    assert tree(mv.path) == tree(Path(job.outputs["pytorch_model_folder"]))


def test_files_are_hard_links_and_read_only(workspace: Workspace, job: JobRecord) -> None:
    src = Path(job.outputs["mlflow_model_folder"])
    mv = register_model(
        workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
    )
    weights = Path("model") / "model.safetensors"
    assert (mv.path / weights).stat().st_ino == (src / weights).stat().st_ino
    files = [p for p in mv.path.rglob("*") if p.is_file()]
    assert mv.lineage["files"] == {
        "files": len(files),
        "linked": len(files),
        "cloned": 0,
        "copied": 0,
        "bytes": sum(p.stat().st_size for p in files),
    }
    assert all(not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) for p in files)


def test_copies_where_links_are_refused(
    workspace: Workspace, job: JobRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src, dst, **_kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(registry_files.os, "link", cross_device)
    monkeypatch.setattr(registry_files, "_clone", lambda *_a: False)  # as on ext4
    src = Path(job.outputs["mlflow_model_folder"])
    mv = register_model(
        workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
    )
    weights = Path("model") / "model.safetensors"
    assert (mv.path / weights).stat().st_ino != (src / weights).stat().st_ino
    assert tree(mv.path) == tree(src)
    assert mv.lineage["files"]["linked"] == 0
    assert mv.lineage["files"]["copied"] == mv.lineage["files"]["files"] > 10


def test_a_failed_copy_leaves_nothing_registered(
    workspace: Workspace, job: JobRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def refuse(src, dst, **_kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_full(src, dst, **_kw):
        calls.append(src)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return registry_files.shutil.copyfile(src, dst)

    monkeypatch.setattr(registry_files.os, "link", refuse)
    monkeypatch.setattr(registry_files, "_clone", lambda *_a: False)  # as on ext4
    monkeypatch.setattr(registry_files.shutil, "copy2", disk_full)
    with pytest.raises(OSError, match="No space left"):
        register_model(
            workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
        )
    assert version_dirs(workspace, "chat") == []
    assert list_models(workspace, "chat") == []


def test_a_failed_row_removes_the_files_and_an_orphan_is_replaced(
    workspace: Workspace, job: JobRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_a, **_kw):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(registry_service, "add_version", crash)
        with pytest.raises(RuntimeError, match="killed"):
            register_model(
                workspace,
                name="chat",
                path=f"jobs/{JOB}/outputs/trained_model",
                type="mlflow_model",
            )
    assert version_dirs(workspace, "chat") == []
    # a folder with no row (a registration killed between rename and insert) is replaced
    orphan = workspace.models_dir / "chat" / "1"
    orphan.mkdir(parents=True)
    (orphan / "half.bin").write_bytes(b"x")
    mv = register_model(
        workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
    )
    assert mv.version == "1" and not (mv.path / "half.bin").exists()
    assert (mv.path / "MLmodel").is_file()


def test_versions_count_up_and_take_any_string(workspace: Workspace, job: JobRecord) -> None:
    path = f"jobs/{JOB}/outputs/trained_model"

    def reg(version: str | None = None) -> str:
        return register_model(
            workspace, name="chat", path=path, type="mlflow_model", version=version
        ).version

    assert [reg(), reg()] == ["1", "2"]
    assert reg("v2.1-final_b") == "v2.1-final_b"
    assert get_model(workspace, "chat", label="latest").version == "v2.1-final_b"
    assert reg() == "3"
    assert get_model(workspace, "chat").version == "3"
    with pytest.raises(InvalidParameter, match="already has a version '2'") as err:
        reg("2")
    assert "existing: 1, 2, v2.1-final_b, 3" in err.value.fix and "(4)" in err.value.fix
    assert version_dirs(workspace, "chat") == ["1", "2", "3", "v2.1-final_b"]


def test_a_registered_folder_is_copied_and_left_as_it_was(
    workspace: Workspace, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Issue 17, item 6: registering a user's folder hard-linked its files and made them
    read-only (mode 444, one more link per registration), so editing the source changed
    the registered model."""
    src = tmp_path / "my-model"
    shutil.copytree(tiny_llama_dir, src)
    (src / "notes.txt").write_text("mine\n")
    (src / "notes.txt").chmod(0o640)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in files}
    first = register_model(workspace, name="mine", path=str(src), type="custom_model")
    second = register_model(workspace, name="mine", path=str(src), type="custom_model")
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == modes[p], p
        assert p.stat().st_nlink == 1, p
    for mv in (first, second):
        assert mv.lineage["files"]["linked"] == 0
        assert mv.lineage["files"]["cloned"] + mv.lineage["files"]["copied"] == len(files)
        assert stat.S_IMODE((mv.path / "notes.txt").stat().st_mode) == 0o440  # read-only copy
    registered = {p.name: sha256(first.path / p.relative_to(src)) for p in files}
    with (src / "config.json").open("r+b") as f:  # edited in place, as an editor may
        f.write(b"{}      ")
    (src / "notes.txt").write_text("changed\n")
    assert {p.name: sha256(first.path / p.relative_to(src)) for p in files} == registered
    assert tree(second.path)["notes.txt"] == b"mine\n"


def test_a_clone_or_a_copy_has_the_same_bytes_mode_and_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = tmp_path / "a.bin", tmp_path / "b.bin"
    source.write_bytes(bytes(range(256)) * 4096)
    source.chmod(0o604)
    registry_files._copy(source, target)  # a clone on btrfs/XFS, a copy elsewhere
    assert target.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o604
    assert target.stat().st_mtime_ns == source.stat().st_mtime_ns
    target.unlink()

    def unsupported(*_a):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(registry_files.fcntl, "ioctl", unsupported)
    assert registry_files._copy(source, target) is False
    assert target.read_bytes() == source.read_bytes()


def test_folder_registration_has_folder_lineage_only(
    workspace: Workspace, tiny_llama_dir: Path
) -> None:
    mv = register_model(workspace, name="plain", path=str(tiny_llama_dir), type="custom_model")
    assert mv.lineage == {
        "source": "folder",
        "registered_from": str(tiny_llama_dir.resolve()),
        "files": mv.lineage["files"],
    }
    assert mv.card.context_length == 256 and mv.card.architecture == "LlamaForCausalLM"
    assert mv.description == f"registered from {tiny_llama_dir.resolve()}"
    assert tree(mv.path) == tree(tiny_llama_dir)


def test_refusals_name_what_exists(
    workspace: Workspace, job: JobRecord, tiny_llama_dir: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    def refused(path: str, type: str = "mlflow_model", name: str = "chat", **kw) -> str:
        with pytest.raises((InvalidParameter, JobNotFound)) as err:
            register_model(workspace, name=name, path=path, type=type, **kw)
        return str(err.value)

    msg = refused("jobs/nope/outputs/trained_model")
    assert "no job named 'nope'" in msg and JOB in msg

    spec = build_spec({"name": "queued-job", "model": "x", "train_file": str(tmp_path)})
    create_job(workspace, spec)
    msg = refused("azureml://jobs/queued-job/outputs/trained_model")
    assert "'queued-job' is Queued, not Completed" in msg

    msg = refused(f"jobs/{JOB}/outputs/best_model")
    assert f"job '{JOB}' has no output 'best_model'" in msg
    assert "pytorch_model_folder, mlflow_model_folder, trained_model (= mlflow_model_folder)" in msg

    msg = refused(f"jobs/{JOB}/outputs/pytorch_model_folder", type="mlflow_model")
    assert "has no MLmodel file" in msg
    assert (
        f"use jobs/{JOB}/outputs/trained_model (output mlflow_model_folder / trained_model" in msg
    )
    assert "or register pytorch_model_folder with --type custom_model" in msg

    msg = refused(f"jobs/{JOB}/outputs/trained_model", type="custom_model")
    assert "is an MLflow model folder" in msg
    assert f"use jobs/{JOB}/outputs/pytorch_model_folder (output pytorch_model_folder is" in msg
    assert "or register trained_model with --type mlflow_model" in msg

    msg = refused(str(tiny_llama_dir), type="mlflow_model")
    assert "has no MLmodel file" in msg and "--type custom_model" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json, so" in refused(str(empty), type="custom_model")
    msg = refused(str(tiny_adapter / "model"), type="custom_model")
    assert "bare PEFT adapter" in msg and "pytorch_model_folder" in msg
    (empty / "config.json").write_text("{}")
    (empty / "adapter").mkdir()
    assert "adapter/ folder without adapter_config.json" in refused(str(empty), type="custom_model")
    assert "is not a folder" in refused(str(tmp_path / "missing"))
    msg = refused(str(tiny_llama_dir), type="triton_model")
    assert "--type 'triton_model'" in msg and "custom_model" in msg
    assert "model name '../x' is not valid" in refused(str(tiny_llama_dir), name="../x")
    assert "version 'a b' is not valid" in refused(str(tiny_llama_dir), version="a b")
    assert not (workspace.models_dir / "chat").exists()
    assert not (workspace.models_dir / "../x").exists()


def test_concurrent_registrations_take_distinct_versions(
    workspace: Workspace, job: JobRecord
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def reg(_i: int) -> str:
        return register_model(
            workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
        ).version

    with ThreadPoolExecutor(4) as pool:
        versions = sorted(pool.map(reg, range(4)))
    assert versions == ["1", "2", "3", "4"]
    assert version_dirs(workspace, "chat") == versions


def test_base_model_deleted_since_the_job(workspace: Workspace, job: JobRecord) -> None:
    from chattune.registry import delete_model

    base = job.steps["model_import"]["state"]
    imported = delete_model(workspace, base["model_name"], base["model_version"])
    assert imported.kind == "imported" and not imported.path.exists()
    mv = register_model(
        workspace, name="chat", path=f"jobs/{JOB}/outputs/trained_model", type="mlflow_model"
    )
    assert mv.lineage["base_model"] == {
        "name": base["model_name"],
        "version": base["model_version"],
        "note": "no longer in the workspace; card read from the model",
    }
    assert mv.card.context_length == 256 and mv.card.architecture == "LlamaForCausalLM"
    assert "components/tokenizer" in mv.card.chat_template_source
