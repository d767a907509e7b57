"""`chattune job params`, `job list --json`, `job show --json` and the job-creation checks of
`resume_from_checkpoint` (no training: the runner is not started)."""

from __future__ import annotations

import json
from pathlib import Path

from chattune.cli.main import main
from chattune.jobs.service import submit_job
from chattune.jobs.store import get_job, list_jobs
from chattune.train.params import FinetuneParams, param_docs
from chattune.workspace import Workspace
from tests.jobs.conftest import write_chats


def test_job_params_lists_every_parameter_with_type_default_and_meaning(capsys) -> None:
    assert main(["job", "params"]) == 0
    out = capsys.readouterr().out
    for d in param_docs():
        assert f"{d.name} ({d.type}, default {d.default})" in out
        assert d.description.split()[0] in out
    assert len(param_docs()) == len(FinetuneParams.model_fields)
    assert main(["job", "params", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed] == list(FinetuneParams.model_fields)
    assert all(p["type"] and p["default"] and p["description"] for p in listed)


def test_job_create_help_points_to_job_params(capsys) -> None:
    assert main(["job", "create", "--help"]) == 0
    assert "chattune job params" in " ".join(capsys.readouterr().out.split())


def _submit(ws: Workspace, tmp_path: Path, model: Path, name: str, **params: str):
    train = write_chats(tmp_path / "train.jsonl", 13)  # enough to train: 10 after the split
    data = {"name": name, "model": str(model), "train_file": str(train), "parameters": params}
    return submit_job(ws, data, start=False)[0]


def test_job_list_and_show_json_are_the_records(workspace, tmp_path, tiny_llama_dir, capsys):
    for name in ("first", "second"):
        _submit(workspace, tmp_path, tiny_llama_dir, name, learning_rate="1e-4")
    ws = ["--workspace", str(workspace.root)]
    assert main(["job", "list", "--json", *ws]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        json.loads(json.dumps(j.to_dict(), default=str)) for j in list_jobs(workspace)
    ]
    assert [j["name"] for j in listed] == ["first", "second"]
    assert main(["job", "show", "second", "--json", *ws]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == listed[1]
    assert shown["status"] == "Queued" and shown["spec"]["parameters"]["learning_rate"] == "0.0001"
    assert set(shown["steps"]) == {
        "validation",
        "model_import",
        "preprocess",
        "finetune",
        "evaluate",
        "convert",
    }


def test_a_checkpoint_path_that_cannot_resume_is_refused_at_creation(
    workspace, tmp_path, tiny_llama_dir, capsys
) -> None:
    train = write_chats(tmp_path / "train.jsonl", 13)  # enough to train: 10 after the split
    args = ["job", "create", "--workspace", str(workspace.root), "--model", str(tiny_llama_dir)]
    args += ["--train-file", str(train), "--name", "r"]
    for path, says in [
        (tmp_path / "gone", "does not exist"),
        (tiny_llama_dir, "is not a transformers checkpoint folder (no trainer_state.json)"),
    ]:
        assert main([*args, "--set", f"resume_from_checkpoint={path}"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"`resume_from_checkpoint` '{path}' {says}" in err
        assert "fix: set `resume_from_checkpoint` to a `checkpoint-N` folder" in err
        assert not (workspace.jobs_dir / "r").exists()


def test_true_and_false_are_accepted_and_stored_as_the_component_has_them(
    workspace, tmp_path, tiny_llama_dir
) -> None:
    for name, value in (("t", "true"), ("f", "false")):
        job = _submit(workspace, tmp_path, tiny_llama_dir, name, resume_from_checkpoint=value)
        assert get_job(workspace, name).spec.parameters["resume_from_checkpoint"] == value
        assert job.status == "Queued"
