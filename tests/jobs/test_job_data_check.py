"""A job's data is checked before the job is queued: what cannot train is refused at once,
by the CLI, the service and the azure-ai-ml-shaped SDK alike, and no job is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from chattune.aml import Input, MLClient
from chattune.aml.dsl import pipeline
from chattune.cli.main import main
from chattune.errors import ChattuneError
from chattune.identity import DefaultAzureCredential
from chattune.jobs.service import submit_job
from chattune.jobs.store import list_jobs
from chattune.train.preprocess_inputs import MIN_TRAIN_ROWS, check_data_files
from tests.jobs.conftest import write_chats


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files that cannot train, with what the refusal says about each."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("PK\x03\x04 this is a zip\nnot json\n")
    return {
        "empty": (empty, f"`train_file` {empty} is empty: it holds no rows"),
        "garbage": (garbage, f"`train_file` {garbage} is not JSON lines: none of its 2 rows"),
        # 12 valid rows: 9 left for training after the 80/10/10 split
        "too small": (
            write_chats(tmp_path / "small.jsonl", 12),
            "has 12 valid rows (0 bad): 9 are left for training after the 80/10/10 split, "
            f"at least {MIN_TRAIN_ROWS} are needed",
        ),
    }


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    # the job is never run here: any existing folder passes as a model at creation
    folder = tmp_path / "model"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("case", ["empty", "garbage", "too small"])
def test_job_create_refuses_data_that_cannot_train(
    case, bad_files, model_dir, workspace, capsys
) -> None:
    path, says = bad_files[case]
    code = main(
        [
            "job",
            "create",
            "--workspace",
            str(workspace.root),
            "--model",
            str(model_dir),
            "--train-file",
            str(path),
            "--name",
            "bad",
        ]
    )
    err = " ".join(capsys.readouterr().err.split())
    assert code != 0
    assert says in err and "fix:" in err
    assert list_jobs(workspace) == []
    assert not (workspace.jobs_dir / "bad").exists()


def test_every_data_problem_is_reported_at_once(bad_files, model_dir, workspace) -> None:
    data = {
        "model": str(model_dir),
        "train_file": str(bad_files["too small"][0]),
        "validation_file": str(bad_files["empty"][0]),
        "test_file": str(bad_files["garbage"][0]),
    }
    with pytest.raises(ChattuneError) as err:
        submit_job(workspace, data, start=False)
    message, fix = err.value.message, err.value.fix or ""
    assert f"`validation_file` {bad_files['empty'][0]} is empty" in message
    assert f"`test_file` {bad_files['garbage'][0]} is not JSON lines" in message
    # with a validation file, all 12 rows train: enough
    assert "`train_file`" not in message
    assert "put conversations in empty.jsonl" in fix and "write garbage.jsonl as" in fix
    assert list_jobs(workspace) == []


def test_the_split_decides_how_many_rows_are_enough(tmp_path: Path) -> None:
    train = write_chats(tmp_path / "t.jsonl", 12)
    test = write_chats(tmp_path / "s.jsonl", 3)
    assert check_data_files({"train_file": train, "test_file": test}).problems == []
    train = write_chats(tmp_path / "t.jsonl", 11)  # 11 - 2 = 9 after the last 20%
    [problem] = check_data_files({"train_file": train, "test_file": test}).problems
    assert "9 are left for training after moving the last 20% to validation" in problem
    fixes = check_data_files({"train_file": train, "test_file": test}).fixes
    assert fixes == ["add conversations to `train_file`: at least 12 valid rows with these files"]


def test_a_valid_file_still_creates_the_job(tmp_path, model_dir, workspace) -> None:
    train = write_chats(tmp_path / "train.jsonl", 13)  # 10 rows after the 80/10/10 split
    record, _ = submit_job(
        workspace, {"model": str(model_dir), "train_file": str(train)}, start=False
    )
    assert [j.name for j in list_jobs(workspace)] == [record.name]


@pytest.mark.parametrize("case", ["empty", "garbage", "too small"])
def test_the_sdk_refuses_data_that_cannot_train(case, bad_files, workspace) -> None:
    ml = MLClient(DefaultAzureCredential(), "sub", "rg", "ws", workspace_path=workspace.root)
    registry = MLClient(
        DefaultAzureCredential(), registry_name="azureml", workspace_path=workspace.root
    )
    component = registry.components.get(name="chat_completion_pipeline", label="latest")
    model = registry.models.get("SmolLM2-135M-Instruct", label="latest")
    path, says = bad_files[case]

    @pipeline()
    def create_pipeline():
        node = component(
            mlflow_model_path=model.id,
            compute_finetune="local",
            train_file_path=Input(type="uri_file", path=str(path)),
        )
        return {"trained_model": node.outputs.mlflow_model_folder}

    with pytest.raises(ChattuneError) as err:
        ml.jobs.create_or_update(create_pipeline(), experiment_name="x")
    assert says.split("` ")[-1] in err.value.message
    assert ml.jobs.list() == []
