"""The workflow as a user runs it, each command a process (pytest's `filterwarnings` would
hide warnings in-process), with a tiny LoRA job: no library warnings in what it prints or
in the job's log, and the job's long name whole in `job list` and `job show`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.process import chattune
from tests.jobs.conftest import write_chats

pytestmark = pytest.mark.integration  # a tiny job: fine-tune, evaluate, convert

WARNING = re.compile(r"\w*Warning: ")  # `…/modeling_utils.py:3314: FutureWarning: …`
JOB = "tiny-lora-job-of-the-workflow-output-test"
TINY_JOB = [
    *("--set", "apply_lora=true", "--set", "lora_r=4"),  # the peft path: where warnings were
    *("--set", "max_steps=2", "--set", "logging_steps=1", "--set", "max_seq_length=64"),
    *("--set", "eval_sample_size=2", "--set", "eval_max_new_tokens=4"),
]


@dataclass
class Workflow:
    home: Path
    printed: list[tuple[str, str]]  # (where, line): the command or the job's log


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Workflow:
    root = tmp_path_factory.mktemp("workflow")
    home = root / "ws"
    train = write_chats(root / "train.jsonl", 16, seed=1)
    test = write_chats(root / "test.jsonl", 4, seed=2)
    commands = [
        ["model", "import", str(tiny_llama_dir), "--name", "mine"],
        ["model", "show", "mine"],
        ["data", "show", str(train), "--model", "mine"],
        ["compute", "fit", "--model", "mine"],
        [
            *("job", "create", "--model", "mine", "--name", JOB, "--stream", *TINY_JOB),
            *("--train-file", str(train), "--test-file", str(test)),
        ],
        [
            *("model", "register", "--name", "chat", "--type", "mlflow_model"),
            *("--path", f"jobs/{JOB}/outputs/mlflow_model_folder"),
        ],
        ["model", "show", "chat", "--label", "latest"],
    ]
    printed = []
    for args in commands:
        r = chattune(home, *args, timeout=600)
        where = "chattune " + " ".join(args[:2])
        assert r.returncode == 0, f"{where}:\n{r.stdout}\n{r.stderr}"
        printed += [(where, line) for line in (r.stdout + r.stderr).splitlines()]
    log = (home / "jobs" / JOB / "logs" / "job.log").read_text()
    assert "[finetune] completed" in log and "[evaluate] completed" in log
    printed += [("job.log", line) for line in log.splitlines()]
    return Workflow(home, printed)


def test_no_library_warnings_in_the_output_or_the_job_log(workflow: Workflow) -> None:
    warned = [f"{where}: {line}" for where, line in workflow.printed if WARNING.search(line)]
    assert not warned, "\n".join(warned)


def test_job_list_and_show_print_the_name_whole(workflow: Workflow) -> None:
    for columns in (80, 40):
        for args in (["job", "list"], ["job", "show", JOB]):
            r = chattune(workflow.home, *args, columns=columns)
            assert r.returncode == 0 and JOB in r.stdout, f"COLUMNS={columns}:\n{r.stdout}"
