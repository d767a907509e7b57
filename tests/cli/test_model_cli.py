from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from chattune.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_model_list_has_the_cards(workspace, capsys) -> None:
    code, out, _ = run(capsys, "model", "list", "--json", "--workspace", str(workspace.root))
    assert code == 0
    names = {m["name"] for m in json.loads(out)}
    assert {"Phi-3-mini-4k-instruct", "SmolLM2-135M-Instruct", "Qwen2.5-0.5B-Instruct"} <= names


def test_model_show_tags_and_allow_lists(workspace, capsys) -> None:
    code, out, _ = run(
        capsys,
        "model",
        "show",
        "Phi-3-mini-4k-instruct",
        "--label",
        "latest",
        "--json",
        "--workspace",
        str(workspace.root),
    )
    assert code == 0
    data = json.loads(out)
    assert data["card"]["num_parameters"] == 3_821_079_552
    assert data["card"]["context_length"] == 4096
    tags = data["tags"]
    assert ast.literal_eval(tags["model_specific_defaults"])["apply_lora"] == "true"
    # a 3.8B model does not fit a small CPU box for fine-tuning; the 135M default does
    phi = ast.literal_eval(tags["finetune_compute_allow_list"])
    code, out, _ = run(
        capsys,
        "model",
        "show",
        "SmolLM2-135M-Instruct",
        "--json",
        "--workspace",
        str(workspace.root),
    )
    smol = ast.literal_eval(json.loads(out)["tags"]["finetune_compute_allow_list"])
    assert "local" in smol
    from chattune.host.machine import local_machine

    if local_machine().ram_total_bytes < 40 * 2**30 and not local_machine().gpus:
        assert "local" not in phi


def test_model_show_human_output(workspace, capsys) -> None:
    code, out, _ = run(
        capsys, "model", "show", "SmolLM2-135M-Instruct", "--workspace", str(workspace.root)
    )
    assert code == 0
    for text in ("LoRA target modules", "q_proj", "finetune_compute_allow_list", "8,192"):
        assert text in out


def test_model_show_unknown_and_exclusive(workspace, capsys) -> None:
    code, _, err = run(capsys, "model", "show", "Phi-9", "--workspace", str(workspace.root))
    assert code == 2 and "no model named 'Phi-9'" in err and "fix:" in err
    code, _, err = run(
        capsys,
        "model",
        "show",
        "Phi-3-mini-4k-instruct",
        "--version",
        "1",
        "--label",
        "latest",
        "--workspace",
        str(workspace.root),
    )
    assert code == 2 and "exclusive" in err


def test_model_import_folder_twice(workspace, tiny_phi3_dir: Path, capsys) -> None:
    args = (
        "model",
        "import",
        str(tiny_phi3_dir),
        "--name",
        "tiny-phi",
        "--json",
        "--workspace",
        str(workspace.root),
    )
    code, out, _ = run(capsys, *args)
    first = json.loads(out)  # the progress lines went to stderr
    assert code == 0 and first["reused"] is False and first["version"] == "1"
    code, out, _ = run(capsys, *args)
    assert json.loads(out)["reused"] is True
    code, out, _ = run(capsys, "model", "list", "--workspace", str(workspace.root))
    assert "tiny-phi" in out and "imported" in out


def test_model_import_hub_offline_message(workspace, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(
        capsys,
        "model",
        "import",
        "microsoft/Phi-3-mini-4k-instruct",
        "--workspace",
        str(workspace.root),
    )
    assert code == 2
    assert "not reachable" in err and "chattune model import SmolLM2-135M-Instruct" in err


def test_help_and_version(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "model" in out and "data" in out and "compute" in out
    code, out, _ = run(capsys, "version")
    assert code == 0 and out.strip()
    code, _, err = run(capsys, "model", "show")
    assert code == 2 and "Missing argument" in err


# -- register / show lineage / delete -------------------------------------------------------
@pytest.fixture
def ft_job(workspace, tiny_llama_dir: Path, tmp_path: Path):
    """A Completed job `ft-job-1` with real convert outputs (tests/registry/completed_job.py)."""
    from tests.registry.completed_job import make_adapter, make_job

    adapter = make_adapter(tiny_llama_dir, tmp_path / "finetune")
    (tmp_path / "data").mkdir()
    return make_job(workspace, tiny_llama_dir, adapter, tmp_path / "data")


def test_model_register_show_list_delete(workspace, ft_job, capsys) -> None:
    import hashlib

    ws = ("--workspace", str(workspace.root))
    code, out, err = run(
        capsys,
        "model",
        "register",
        "--name",
        "smol-chat",
        "--version",
        "1732550400",
        "--path",
        "azureml://jobs/ft-job-1/outputs/trained_model",
        "--type",
        "mlflow_model",
        "--tag",
        "dataset=chats",
        "--tag",
        "note=a=b",
        "--json",
        *ws,
    )
    assert code == 0, err
    data = json.loads(out)
    assert (data["version"], data["type"], data["kind"]) == (
        "1732550400",
        "mlflow_model",
        "registered",
    )
    assert data["tags"] == {"dataset": "chats", "note": "a=b"}
    code, out, err = run(
        capsys,
        "model",
        "register",
        "--name",
        "smol-chat",
        "--path",
        "jobs/ft-job-1/outputs/pytorch_model_folder",
        "--type",
        "custom_model",
        *ws,
    )
    assert code == 0 and "registered smol-chat:1732550401 (custom_model)" in out

    code, out, _ = run(capsys, "model", "show", "smol-chat", "--version", "1732550400", *ws)
    assert code == 0
    train_sha = hashlib.sha256(ft_job.spec.train_file.read_bytes()).hexdigest()
    assert "registered (mlflow_model)" in out
    assert "lineage: job ft-job-1, output trained_model (= mlflow_model_folder)" in out
    assert f"  data train: {ft_job.spec.train_file} (24 rows) sha256 {train_sha}\n" in out
    assert "  metrics: bleu_1=0.25, eval_loss=2.5, perplexity=41.5, rougeL=0.31" in out
    code, out, _ = run(capsys, "model", "show", "smol-chat", "--label", "latest", "--json", *ws)
    lineage = json.loads(out)["lineage"]
    assert json.loads(out)["version"] == "1732550401"
    assert lineage["data"]["train"]["sha256"] == train_sha
    assert lineage["metrics"]["eval_loss"] == 2.5

    code, out, _ = run(capsys, "model", "list", "--json", *ws)
    mine = [
        (m["version"], m["kind"], m["type"]) for m in json.loads(out) if m["name"] == "smol-chat"
    ]
    assert mine == [
        ("1732550400", "registered", "mlflow_model"),
        ("1732550401", "registered", "custom_model"),
    ]
    code, out, _ = run(capsys, "model", "list", *ws)
    assert code == 0 and "smol-chat" in out and "1732550401" in out  # never cut

    with workspace.write() as conn:
        conn.execute(
            "INSERT INTO endpoints(name, primary_key_hash, secondary_key_hash, created_at,"
            " updated_at)"
            " VALUES ('chat-ep', 'k1', 'k2', 0, 0)"
        )
        conn.execute(
            "INSERT INTO deployments(endpoint, name, model_name, model_version, created_at,"
            " updated_at) VALUES ('chat-ep', 'demo', 'smol-chat', '1732550400', 0, 0)"
        )
    code, _, err = run(capsys, "model", "delete", "smol-chat", "--version", "1732550400", *ws)
    assert code == 2
    assert "deployment 'demo' of endpoint 'chat-ep'" in err and "fix:" in err
    with workspace.write() as conn:
        conn.execute("DELETE FROM deployments")
    code, out, _ = run(capsys, "model", "delete", "smol-chat", "--version", "1732550400", *ws)
    assert code == 0 and "deleted smol-chat:1732550400" in out
    code, out, _ = run(capsys, "model", "list", "--json", *ws)
    assert [m["version"] for m in json.loads(out) if m["name"] == "smol-chat"] == ["1732550401"]


def test_model_register_and_delete_refusals(workspace, ft_job, capsys) -> None:
    ws = ("--workspace", str(workspace.root))
    base = ("model", "register", "--name", "smol-chat", "--type", "mlflow_model")
    code, _, err = run(capsys, *base, "--path", "jobs/ft-job-1/outputs/nope", *ws)
    assert code == 2 and "has no output 'nope'" in err and "trained_model" in err
    code, _, err = run(capsys, *base, "--path", "jobs/ghost/outputs/trained_model", *ws)
    assert code == 2 and "no job named 'ghost'" in err and "ft-job-1" in err
    code, _, err = run(
        capsys, *base, "--path", "jobs/ft-job-1/outputs/trained_model", "--tag", "oops", *ws
    )
    assert code == 2 and "--tag takes key=value" in err
    code, _, err = run(capsys, "model", "register", "--name", "x", "--path", "p", *ws)
    assert code == 2 and "--type" in err  # the type is required
    code, _, err = run(capsys, "model", "delete", "SmolLM2-135M-Instruct", "--label", "latest", *ws)
    assert code == 2 and "catalog versions cannot be deleted" in err
