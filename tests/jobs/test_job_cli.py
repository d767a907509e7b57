"""The fine-tuning job end to end through the CLI, on a tiny model (integration)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import mlflow
import pytest

from chattune.cli.main import main
from chattune.jobs.store import get_job, progress_path
from chattune.workspace import Workspace
from chattune.workspace.markers import is_done

pytestmark = pytest.mark.integration

FAST = [
    "--set",
    "max_steps=24",
    "--set",
    "learning_rate=3e-3",
    "--set",
    "logging_steps=2",
    "--set",
    "save_steps=4",
    "--set",
    "eval_sample_size=4",
    "--set",
    "eval_max_new_tokens=8",
    "--set",
    "max_seq_length=128",
    "--set",
    "evaluation_strategy=steps",
    "--set",
    "eval_steps=12",
]


RESUME_TRUE = ["--set", "resume_from_checkpoint=true"]


def create(ws: Workspace, model: Path, files: dict[str, Path], name: str, *extra: str) -> int:
    return main(
        [
            "job",
            "create",
            "--workspace",
            str(ws.root),
            "--model",
            str(model),
            "--train-file",
            str(files["train"]),
            "--test-file",
            str(files["test"]),
            "--name",
            name,
            *FAST,
            *extra,
        ]
    )


def wait_for(cond, timeout: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def history(ws: Workspace, run_id: str, key: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(ws.mlflow_tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture
def kill_leftovers(workspace: Workspace):
    """Whatever a test leaves running is killed, even when the test fails."""
    yield
    from chattune.jobs.store import list_jobs
    from chattune.workspace.processes import pid_alive

    for job in list_jobs(workspace):
        if job.pid and pid_alive(job.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, signal.SIGKILL)


def test_pipeline_end_to_end(workspace, tiny_llama_dir, chat_files, capsys, kill_leftovers):
    assert (
        create(
            workspace,
            tiny_llama_dir,
            chat_files,
            "j1",
            "--set",
            "apply_lora=true",
            "--set",
            "lora_r=4",
            "--set",
            "lora_alpha=8",
            "--stream",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "[finetune] completed" in out and "Status: Completed" in out
    job = get_job(workspace, "j1")
    assert job.status == "Completed"
    assert all(s["status"] == "Completed" for s in job.steps.values())
    # tracked in MLflow: parameters, per-step loss that went down, final evaluation metrics
    run = mlflow.MlflowClient(workspace.mlflow_tracking_uri).get_run(job.mlflow_run_id)
    assert run.data.params["apply_lora"] == "true" and run.data.params["max_steps"] == "24"
    loss = history(workspace, job.mlflow_run_id, "train_loss")
    assert len(loss) >= 5 and loss[-1][1] < loss[0][1]
    for key in (
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "eval_loss",
        "test_perplexity",
        "test_bleu_1",
        "test_rougeL",
    ):
        assert history(workspace, job.mlflow_run_id, key), key
    assert "perplexity" in job.metrics and "bleu_4" in job.metrics
    # job show prints the final metrics
    assert main(["job", "show", "j1", "--workspace", str(workspace.root)]) == 0
    assert "perplexity =" in capsys.readouterr().out
    # the MLflow model folder loads and generates
    folder = Path(job.outputs["mlflow_model_folder"])
    assert (folder / "MLmodel").is_file()
    pipe = mlflow.transformers.load_model(str(folder))
    text = pipe("Hello", max_new_tokens=5, do_sample=False)
    assert isinstance(text, list) and text
    assert (workspace.jobs_dir / "j1" / "outputs" / "mlflow_model_folder").is_dir()
    # one done marker: every step's cache folder and every checkpoint is marked the same way
    states = {s: job.steps[s]["state"] for s in ("preprocess", "finetune", "evaluate")}
    done = [Path(states[s][f"{s}_dir"]) for s in states]
    done += [folder.parent, *Path(states["finetune"]["finetune_dir"]).glob("checkpoints/*")]
    assert len(done) > 4 and all(is_done(d) for d in done), done


def test_cache_reuse_and_force_rerun(workspace, tiny_llama_dir, chat_files, kill_leftovers):
    for name in ("a", "b"):
        assert create(workspace, tiny_llama_dir, chat_files, name, "--stream") == 0
    b = get_job(workspace, "b")
    for step in ("preprocess", "finetune", "evaluate", "convert"):
        assert b.steps[step]["cached"], step
    assert b.outputs == get_job(workspace, "a").outputs
    assert create(workspace, tiny_llama_dir, chat_files, "c", "--force-rerun", "--stream") == 0
    c = get_job(workspace, "c")
    assert not any(c.steps[s].get("cached") for s in ("preprocess", "finetune", "convert"))
    assert c.outputs["mlflow_model_folder"] != b.outputs["mlflow_model_folder"]


def test_resume_from_checkpoint_true_and_a_path(
    workspace, tiny_llama_dir, chat_files, kill_leftovers
):
    assert create(workspace, tiny_llama_dir, chat_files, "a", "--stream") == 0
    a = get_job(workspace, "a")
    # true says where to start, not what is trained: the finished run of `a` is reused
    assert create(workspace, tiny_llama_dir, chat_files, "t", "--stream", *RESUME_TRUE) == 0
    t = get_job(workspace, "t")
    assert t.steps["finetune"]["cached"] and t.outputs == a.outputs
    # a checkpoint path starts a different run: trained from that checkpoint on
    ckpt = Path(a.steps["finetune"]["state"]["finetune_dir"]) / "checkpoints" / "checkpoint-12"
    extra = ["--set", f"resume_from_checkpoint={ckpt}"]
    assert create(workspace, tiny_llama_dir, chat_files, "p", "--stream", *extra) == 0
    p = get_job(workspace, "p")
    assert not p.steps["finetune"]["cached"] and p.outputs != a.outputs
    log = (workspace.jobs_dir / "p" / "logs" / "job.log").read_text()
    assert f"resuming from {ckpt}" in log
    assert "\nstep 14/24 " in log and "\nstep 2/24 " not in log  # logged every 2 steps


def test_sigkill_then_resume_matches_uninterrupted(
    workspace, tiny_llama_dir, chat_files, kill_leftovers
):
    assert create(workspace, tiny_llama_dir, chat_files, "whole", "--stream") == 0
    assert create(workspace, tiny_llama_dir, chat_files, "killed", "--force-rerun") == 0
    prog = progress_path(workspace, "killed")

    def past_two_checkpoints() -> bool:
        try:
            return json.loads(prog.read_text())["step"] >= 10
        except (OSError, ValueError, KeyError):
            return False

    wait_for(past_two_checkpoints, what="finetune to pass step 10")
    pid = get_job(workspace, "killed").pid
    os.killpg(pid, signal.SIGKILL)  # the runner and its finetune process, no chance to save
    wait_for(lambda: get_job(workspace, "killed").status == "Failed", what="death noticed")
    assert "job resume killed" in get_job(workspace, "killed").error
    assert main(["job", "resume", "killed", "--workspace", str(workspace.root), "--stream"]) == 0
    killed, whole = get_job(workspace, "killed"), get_job(workspace, "whole")
    log = (workspace.jobs_dir / "killed" / "logs" / "job.log").read_text()
    assert "resuming from" in log and "checkpoint-" in log
    assert abs(killed.metrics["eval_loss"] - whole.metrics["eval_loss"]) < 1e-3
    last_k = history(workspace, killed.mlflow_run_id, "train_loss")[-1]
    last_w = history(workspace, whole.mlflow_run_id, "train_loss")[-1]
    assert last_k[0] == last_w[0] == 24 and abs(last_k[1] - last_w[1]) < 1e-3


def test_a_damaged_newest_checkpoint_does_not_block_resume(
    workspace, tiny_llama_dir, chat_files, kill_leftovers
):
    assert create(workspace, tiny_llama_dir, chat_files, "dmg") == 0
    prog = progress_path(workspace, "dmg")
    wait_for(
        lambda: prog.is_file() and json.loads(prog.read_text())["step"] >= 10,
        what="finetune to pass step 10",
    )
    os.killpg(get_job(workspace, "dmg").pid, signal.SIGKILL)
    wait_for(lambda: get_job(workspace, "dmg").status == "Failed", what="death noticed")
    job = get_job(workspace, "dmg")
    ckpt_dir = Path(job.steps["preprocess"]["state"]["preprocess_dir"]).parent.parent
    done = sorted(
        (c.parent for c in ckpt_dir.glob("finetune/*/checkpoints/checkpoint-*/_SUCCESS")),
        key=lambda c: int(c.name.split("-")[1]),
    )
    assert len(done) >= 2, done  # saved at steps 4 and 8 at least
    newest, previous = done[-1], done[-2]
    weights = newest / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(100)
    assert main(["job", "resume", "dmg", "--workspace", str(workspace.root), "--stream"]) == 0
    assert get_job(workspace, "dmg").status == "Completed"
    log = (workspace.jobs_dir / "dmg" / "logs" / "job.log").read_text()
    assert f"{newest.name} skipped: model.safetensors is 100 bytes, manifest says {size:,}" in log
    assert f"resuming from {previous}" in log


def test_cancel_saves_then_resume(workspace, tiny_llama_dir, chat_files, kill_leftovers):
    assert create(workspace, tiny_llama_dir, chat_files, "c1", "--set", "save_steps=1000") == 0
    prog = progress_path(workspace, "c1")
    wait_for(
        lambda: prog.is_file() and json.loads(prog.read_text())["step"] >= 3,
        what="finetune to start",
    )
    assert main(["job", "cancel", "c1", "--workspace", str(workspace.root)]) == 0
    job = get_job(workspace, "c1")
    assert job.status == "Canceled" and job.steps["finetune"]["status"] == "Canceled"
    ckpts = list(
        Path(job.steps["preprocess"]["state"]["preprocess_dir"]).parent.parent.glob(
            "finetune/*/checkpoints/checkpoint-*/_SUCCESS"
        )
    )
    assert ckpts, "SIGTERM must leave a complete checkpoint"
    assert main(["job", "resume", "c1", "--workspace", str(workspace.root), "--stream"]) == 0
    assert get_job(workspace, "c1").status == "Completed"


def test_two_processes_gloo(workspace, tiny_llama_dir, chat_files, capsys, kill_leftovers):
    assert (
        create(
            workspace,
            tiny_llama_dir,
            chat_files,
            "ddp",
            "--set",
            "number_of_gpu_to_use_finetuning=2",
            "--stream",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "torch.distributed.run" in out and "--nproc_per_node=2" in out
    job = get_job(workspace, "ddp")
    loss = history(workspace, job.mlflow_run_id, "train_loss")
    assert loss[-1][1] < loss[0][1]


def test_jobs_on_one_compute_queue_in_order(workspace, tiny_llama_dir, chat_files, kill_leftovers):
    assert create(workspace, tiny_llama_dir, chat_files, "q1") == 0
    assert create(workspace, tiny_llama_dir, chat_files, "q2", "--force-rerun") == 0
    assert main(["job", "stream", "q2", "--workspace", str(workspace.root)]) == 0
    q1, q2 = get_job(workspace, "q1"), get_job(workspace, "q2")
    assert q1.status == q2.status == "Completed"
    assert q2.started_at >= q1.ended_at - 0.5


def test_bad_parameters_rejected_before_any_work(workspace, tiny_llama_dir, chat_files, capsys):
    code = create(
        workspace,
        tiny_llama_dir,
        chat_files,
        "bad",
        "--set",
        "lerning_rate=1",
        "--set",
        "lora_r=0",
        "--set",
        "precision=8",
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown parameter `lerning_rate`" in err and "did you mean `learning_rate`" in err
    assert "`lora_r`" in err and "`precision`" in err
    assert not (workspace.jobs_dir / "bad").exists()


def test_too_few_rows_are_refused_at_creation(workspace, tiny_llama_dir, tmp_path, capsys):
    from tests.jobs.conftest import write_chats

    files = {
        "train": write_chats(tmp_path / "t.jsonl", 6),
        "test": write_chats(tmp_path / "s.jsonl", 3),
    }
    assert create(workspace, tiny_llama_dir, files, "few", "--stream") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "5 are left for training after moving the last 20% to validation" in err
    assert not (workspace.jobs_dir / "few").exists()


def test_rows_lost_in_preprocess_fail_the_job_with_message(
    workspace, tiny_llama_dir, chat_files, kill_leftovers
):
    # the files pass the check at creation; truncation to 4 tokens leaves nothing to learn
    extra = ["--set", "max_seq_length=4", "--stream"]
    assert create(workspace, tiny_llama_dir, chat_files, "short", *extra) == 1
    job = get_job(workspace, "short")
    assert job.status == "Failed" and job.steps["preprocess"]["status"] == "Failed"
    assert "max_seq_length" in job.error and job.steps["finetune"]["status"] == "Skipped"
