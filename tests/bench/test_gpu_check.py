"""`make gpu-check` on a CPU machine: the jobs it would run are valid and say what they
claim (DeepSpeed stage, precision, processes); without CUDA it runs nothing and exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from chattune.train.finetune import FinetuneConfig, _deepspeed_config
from chattune.train.params import FinetuneParams

from .conftest import load_bench

gpu_check = load_bench("gpu_check")


def _params(cmd: list[str]) -> dict[str, str]:
    sets = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"]
    return dict(s.split("=", 1) for s in sets)


def test_each_job_check_runs_the_settings_it_names() -> None:
    plan = dict((c.name, cmd) for c, cmd in gpu_check.plan(Path("/w/chitchat")))
    assert set(plan) == {c.name for c in gpu_check.CHECKS}
    for check in gpu_check.CHECKS:
        cmd = plan[check.name]
        if check.pytest:
            assert cmd[1:4] == ["-m", "pytest", "-q"] and Path(cmd[-1]).parts[:2] == (
                "tests",
                "serving",
            )
            continue
        assert cmd[:3] == ["chattune", "job", "create"] and "--stream" in cmd
        params = FinetuneParams.model_validate(_params(cmd))  # every --set is a valid parameter
        name = check.name
        assert params.apply_lora == name.startswith("lora")
        if "zero" in name:
            assert params.apply_deepspeed and params.deepspeed_stage == name.split("zero")[1][0]
        assert params.precision == ("16" if name.endswith("fp16") else "bf16")
        assert params.number_of_gpu_to_use_finetuning == (2 if "2gpu" in name else 1)


@pytest.mark.parametrize("stage", ["2", "3"])
def test_the_deepspeed_config_a_check_gets(stage, tmp_path, monkeypatch) -> None:
    """What the finetune step writes for the ZeRO checks on a CUDA machine (deepspeed is
    faked importable: it is not installed on CPU machines)."""
    import json
    import sys
    import types

    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))
    params = FinetuneParams(apply_deepspeed=True, deepspeed_stage=stage, precision="bf16")
    cfg = FinetuneConfig(model_dir=tmp_path, data_dir=tmp_path, output_dir=tmp_path,
                         params=params, max_seq_length=512, lora_target_modules=[])  # fmt: skip
    path = _deepspeed_config(cfg, cuda=True)
    ds = json.loads(Path(path).read_text())
    assert ds["zero_optimization"]["stage"] == int(stage)
    assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"  # the Trainer's flags decide
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (
        stage == "3"
    )
    assert _deepspeed_config(cfg, cuda=False) is None  # and on a CPU it says it runs without


def test_deepspeed_used_reads_the_steps_own_note() -> None:
    zero = next(c for c in gpu_check.CHECKS if c.name == "lora-zero2-bf16")
    assert gpu_check.deepspeed_used(zero, "step 1/20 ...") == "ZeRO-2"
    log = "note: apply_deepspeed is set but deepspeed is not installed; running without it"
    assert gpu_check.deepspeed_used(zero, log).startswith("no (deepspeed is not installed")
    base = next(c for c in gpu_check.CHECKS if c.name == "lora-bf16")
    assert gpu_check.deepspeed_used(base, "") == "off"


def test_skips_say_why() -> None:
    two = next(c for c in gpu_check.CHECKS if c.gpus == 2)
    assert gpu_check.skip_reason(two, 1, "/env") == "needs 2 GPUs, this machine has 1"
    vllm = next(c for c in gpu_check.CHECKS if c.needs_vllm)
    assert "chattune engine install vllm" in gpu_check.skip_reason(vllm, 1, None)
    assert gpu_check.skip_reason(vllm, 1, "/env") is None


def test_without_cuda_nothing_runs(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: `make gpu-check` runs the checks")
    assert gpu_check.main([]) == 2
    assert "needs CUDA" in capsys.readouterr().err
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "chattune model import SmolLM2-135M-Instruct" in out and "needs 2 GPUs" in out
