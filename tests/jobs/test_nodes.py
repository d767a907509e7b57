"""Training across nodes: two torchrun agents on 127.0.0.1 act as two machines sharing the
workspace (c10d rendezvous, gloo, one process each) and train like one process at the same
global batch; checkpoints and MLflow metrics are written once; a killed node is resumed."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest

from chattune.cli.main import main
from chattune.errors import InvalidParameter
from chattune.jobs.nodes import RDZV_ENV, launch_command
from chattune.jobs.store import get_job, log_path
from chattune.train.params import FinetuneParams

from .test_job_cli import create, history, kill_leftovers, wait_for  # noqa: F401 (fixture)

# the same data and steps for every run; no evaluation passes (they do not change the loss)
RUN = ["--set", "max_steps=8", "--set", "save_steps=2", "--set", "evaluation_strategy=disable",
       "--set", "packing=false", "--set", "seed=7"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(ws, name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The second node: `chattune job join NAME`, in its own process group."""
    cmd = [sys.executable, "-m", "chattune", "job", "join", name, "--workspace", str(ws.root)]
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    """kill -9 of the node: the join, its torchrun agent and the workers (torchrun starts
    them in sessions of their own, so a process-group kill would miss them)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    proc.wait()


def _final_loss(ws, name: str) -> float:
    """The Trainer's train_loss: the mean over every step of the run."""
    return get_job(ws, name).metrics["train_loss"]


def test_launch_command_for_several_nodes(monkeypatch, tmp_path: Path) -> None:
    cfg = tmp_path / "finetune_config.json"
    one = launch_command(FinetuneParams(), cfg, "j")
    assert one[1:] == ["-m", "chattune.train.finetune", str(cfg)]
    two = FinetuneParams(num_nodes_finetune=2)
    monkeypatch.delenv(RDZV_ENV, raising=False)
    with pytest.raises(InvalidParameter, match=RDZV_ENV) as err:
        launch_command(two, cfg, "j")
    assert "chattune job join j" in err.value.fix
    monkeypatch.setenv(RDZV_ENV, "10.0.0.1:29500")
    cmd = launch_command(two, cfg, "j")
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for flag in ("--nproc_per_node=1", "--nnodes=2", "--rdzv_backend=c10d",
                 "--rdzv_endpoint=10.0.0.1:29500", "--rdzv_id=j"):  # fmt: skip
        assert flag in cmd


@pytest.mark.integration
@pytest.mark.usefixtures("kill_leftovers")
def test_join_refuses_a_job_that_ended(workspace, tiny_llama_dir, chat_files, capsys) -> None:
    assert create(workspace, tiny_llama_dir, chat_files, "one", *RUN, "--stream") == 0
    capsys.readouterr()
    assert main(["job", "join", "one", "--workspace", str(workspace.root)]) != 0
    err = capsys.readouterr().err
    assert "is Completed" in err and "chattune job resume one" in err


@pytest.mark.integration
@pytest.mark.usefixtures("kill_leftovers")
def test_two_nodes_train_like_one_process_and_resume_after_a_node_dies(
    workspace, tiny_llama_dir, chat_files, capsys, monkeypatch, tmp_path
) -> None:
    # one process, 2 conversations a step
    assert create(workspace, tiny_llama_dir, chat_files, "single", *RUN,
                  "--set", "per_device_train_batch_size=2", "--stream") == 0  # fmt: skip
    want = _final_loss(workspace, "single")

    # two nodes, 1 conversation each a step: the same global batch
    monkeypatch.setenv(RDZV_ENV, f"127.0.0.1:{_free_port()}")
    env = {**os.environ}
    node2 = _join(workspace, "nodes", env, tmp_path / "node2.log")
    try:
        assert create(workspace, tiny_llama_dir, chat_files, "nodes", *RUN, "--set",
                      "per_device_train_batch_size=1", "--set", "num_nodes_finetune=2",
                      "--force-rerun", "--stream") == 0  # fmt: skip
        assert node2.wait(timeout=300) == 0, (tmp_path / "node2.log").read_text()
    finally:
        _stop(node2)
    out = capsys.readouterr().out
    assert "--nnodes=2" in out and "--rdzv_backend=c10d" in out
    assert "--nnodes=2" in (tmp_path / "node2.log").read_text()
    got = _final_loss(workspace, "nodes")
    print(f"train_loss: one process {want:.6f}, two nodes {got:.6f}")
    assert got == pytest.approx(want, abs=1e-3)
    job = get_job(workspace, "nodes")
    # written once: one series point per logged step, one folder per checkpoint
    steps = [s for s, _ in history(workspace, job.mlflow_run_id, "train_loss")]
    assert steps and len(steps) == len(set(steps))

    # a node dies mid-training: the step fails; resume + join again finishes the job
    monkeypatch.setenv(RDZV_ENV, f"127.0.0.1:{_free_port()}")
    env = {**os.environ}
    node2 = _join(workspace, "again", env, tmp_path / "node2-again.log")
    try:
        assert create(workspace, tiny_llama_dir, chat_files, "again", *RUN, "--set",
                      "max_steps=40", "--set", "per_device_train_batch_size=1", "--set",
                      "num_nodes_finetune=2", "--force-rerun") == 0  # fmt: skip
        progress = log_path(workspace, "again")
        wait_for(lambda: "step 4/" in progress.read_text() if progress.exists() else False,
                 timeout=300, what="step 4 of the two-node run")  # fmt: skip
        _stop(node2)  # kill -9 of the second node's torchrun agent and its worker
        wait_for(lambda: get_job(workspace, "again").finished, timeout=300, what="the failure")
        assert get_job(workspace, "again").status == "Failed"
        node2 = _join(workspace, "again", env, tmp_path / "node2-resume.log")
        assert main(["job", "resume", "again", "--workspace", str(workspace.root),
                     "--stream"]) == 0  # fmt: skip
        assert node2.wait(timeout=300) == 0, (tmp_path / "node2-resume.log").read_text()
    finally:
        _stop(node2)
    job = get_job(workspace, "again")
    assert job.status == "Completed"
    assert "resuming from" in log_path(workspace, "again").read_text().lower()
    run = mlflow.MlflowClient(workspace.mlflow_tracking_uri).get_run(job.mlflow_run_id)
    assert run.data.params["num_nodes_finetune"] == "2"


def test_the_readme_shows_the_command_each_node_runs(monkeypatch) -> None:
    """The README's several-nodes section: the torchrun line it shows is `launch_command`'s
    for its sbatch script's settings."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**Several nodes.**") :]
    script = section[
        section.index("```sh\n") : section.index("```\n", section.index("```sh\n") + 5)
    ]
    shown = section[section.index("```text\n") + 8 :].split("\n", 1)[0].split()
    assert "--set num_nodes_finetune=2" in script and "number_of_gpu_to_use_finetuning=4" in script
    assert "chattune job join my-job" in script and "--name my-job" in script
    monkeypatch.setenv(RDZV_ENV, "node1:29500")
    cfg = Path("/shared/chattune/jobs/my-job/finetune_config.json")
    params = FinetuneParams(num_nodes_finetune=2, number_of_gpu_to_use_finetuning=4)
    assert shown == ["python", *launch_command(params, cfg, "my-job")[1:]]
