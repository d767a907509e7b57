from __future__ import annotations

import json

import pytest
import torch

from chattune.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # rich wraps long error lines


def test_show_json_has_machine_and_vm_size_fields(workspace, capsys) -> None:
    ws = str(workspace.root)
    assert (
        run(capsys, "compute", "create", "gpu-cluster", "--size", "Standard_NC6s_v3", "-w", ws)[0]
        == 0
    )
    code, out, _ = run(capsys, "compute", "show", "--json", "-w", ws)
    assert code == 0
    data = json.loads(out)
    assert data["machine"]["logical_cores"] >= 1
    assert data["machine"]["ram_total_bytes"] > 0
    assert len(data["machine"]["gpus"]) == torch.cuda.device_count()
    assert isinstance(data["machine"]["cpu_bf16"], bool)
    names = [c["name"] for c in data["computes"]]
    assert names == ["local", "gpu-cluster"]
    vm = data["computes"][1]["vm_size"]
    assert vm["name"] == "Standard_NC6s_v3" and vm["family"] == "standardNCSv3Family"
    assert vm["gpus"] == torch.cuda.device_count()


def test_show_table(workspace, capsys) -> None:
    code, out, _ = run(capsys, "compute", "show", "-w", str(workspace.root))
    assert code == 0
    assert "local" in out and "cores" in out and "RAM" in out and "bf16" in out


def test_show_unknown_compute_lists_available(workspace, capsys) -> None:
    code, _, err = run(capsys, "compute", "show", "nope", "-w", str(workspace.root))
    assert code == 2
    assert "available computes: local" in err


def test_sizes_json(workspace, capsys) -> None:
    code, out, _ = run(capsys, "compute", "sizes", "--json", "-w", str(workspace.root))
    assert code == 0
    sizes = json.loads(out)
    assert sizes[0]["name"] == "local" and sizes[0]["gpus"] == torch.cuda.device_count()


def test_fit_prints_breakdown_and_verdicts(workspace, capsys) -> None:
    code, out, _ = run(
        capsys,
        "compute",
        "fit",
        "--model",
        "SmolLM2-135M-Instruct",
        "--max-seq-length",
        "256",
        "-w",
        str(workspace.root),
    )
    assert code == 0
    for word in ("weights", "activations", "logits", "overhead", "total", "kv cache"):
        assert word in out
    assert "fine-tuning fits" in out and "serving fits" in out


def test_fit_json_and_advice_when_it_does_not_fit(workspace, capsys) -> None:
    code, out, _ = run(
        capsys,
        "compute",
        "fit",
        "--model",
        "Phi-3-mini-4k-instruct",
        "--full",
        "--precision",
        "32",
        "--max-seq-length",
        "4096",
        "--batch-size",
        "8",
        "--json",
        "-w",
        str(workspace.root),
    )
    assert code == 0
    data = json.loads(out)
    training = data["training"]
    assert data["inputs"]["lora"] is False and data["inputs"]["batch_size"] == 8
    assert training["total_bytes"] == sum(training["breakdown_bytes"].values())
    assert training["fits"] is False  # ~61 GB of weights, gradients and AdamW state alone
    assert any("--" in line for line in training["advice"])
    assert data["serving"]["total_bytes"] < training["total_bytes"]


def test_fit_a_model_folder(workspace, capsys, tiny_llama_dir) -> None:
    code, out, _ = run(
        capsys,
        "compute",
        "fit",
        "--model",
        str(tiny_llama_dir),
        "--json",
        "-w",
        str(workspace.root),
    )
    assert code == 0
    data = json.loads(out)
    assert data["inputs"]["max_seq_length"] == 256  # the folder's context
    assert data["training"]["fits"] is True


def test_fit_unknown_model_lists_known_names(workspace, capsys) -> None:
    code, _, err = run(
        capsys, "compute", "fit", "--model", "no-such-model", "-w", str(workspace.root)
    )
    assert code == 2
    assert "SmolLM2-135M-Instruct" in err


def test_fit_rejects_deepspeed_on_cpu(workspace, capsys) -> None:
    code, _, err = run(
        capsys,
        "compute",
        "fit",
        "--model",
        "SmolLM2-135M-Instruct",
        "--deepspeed-stage",
        "3",
        "-w",
        str(workspace.root),
    )
    assert code == 2
    assert "--deepspeed-stage needs GPUs" in err


def test_fit_unknown_compute(workspace, capsys) -> None:
    code, _, err = run(
        capsys,
        "compute",
        "fit",
        "--model",
        "SmolLM2-135M-Instruct",
        "--compute",
        "gpu-cluster",
        "-w",
        str(workspace.root),
    )
    assert code == 2
    assert "no compute named 'gpu-cluster'" in err
