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
    from chattune.compute.machine import local_machine

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
    first = json.loads(out[out.index("{") :])
    assert code == 0 and first["reused"] is False and first["version"] == "1"
    code, out, _ = run(capsys, *args)
    assert json.loads(out[out.index("{") :])["reused"] is True
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
