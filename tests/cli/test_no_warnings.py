"""No library warnings in what a user reads: the workflow's commands as processes (pytest's
`filterwarnings` would hide them in-process) and a tiny LoRA job's log, with Python's
default warning filters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cli.process import chattune
from tests.jobs.conftest import write_chats

pytestmark = pytest.mark.integration  # a tiny job: fine-tune, evaluate, convert

WARNING = re.compile(r"\w*Warning: ")  # `…/peft_model.py:184: FutureWarning: …`
TINY_JOB = [
    *("--set", "apply_lora=true", "--set", "lora_r=4"),  # the peft path: where warnings were
    *("--set", "max_steps=2", "--set", "logging_steps=1", "--set", "max_seq_length=64"),
    *("--set", "eval_sample_size=2", "--set", "eval_max_new_tokens=4"),
]


def test_workflow_and_job_log_print_no_library_warnings(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    home = tmp_path / "ws"
    train = write_chats(tmp_path / "train.jsonl", 16, seed=1)
    test = write_chats(tmp_path / "test.jsonl", 4, seed=2)
    commands = [
        ["model", "import", str(tiny_llama_dir), "--name", "mine"],
        ["model", "show", "mine"],
        ["data", "show", str(train), "--model", "mine"],
        ["compute", "fit", "--model", "mine"],
        [
            *("job", "create", "--model", "mine", "--name", "tiny", "--stream", *TINY_JOB),
            *("--train-file", str(train), "--test-file", str(test)),
        ],
        [
            *("model", "register", "--name", "chat", "--type", "mlflow_model"),
            *("--path", "jobs/tiny/outputs/mlflow_model_folder"),
        ],
        ["model", "show", "chat", "--label", "latest"],
    ]
    printed = []
    for args in commands:
        r = chattune(home, *args, timeout=600)
        assert r.returncode == 0, f"chattune {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        printed += [(args[:2], line) for line in (r.stdout + r.stderr).splitlines()]
    log = home / "jobs" / "tiny" / "logs" / "job.log"
    printed += [(["job.log"], line) for line in log.read_text().splitlines()]
    assert "[finetune] completed" in log.read_text()
    warned = [(where, line) for where, line in printed if WARNING.search(line)]
    assert not warned, "\n".join(f"{' '.join(w)}: {line}" for w, line in warned)
