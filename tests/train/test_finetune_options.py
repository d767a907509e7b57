"""The finetune step's options on a tiny model: every scheduler, gradient checkpointing,
early stopping, save_total_limit, DeepSpeed without CUDA, fp16 on CPU (integration)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from chattune.errors import InvalidParameter
from chattune.train import finetune as ft
from chattune.train.finetune import FinetuneConfig, run_finetune
from chattune.train.params import parse_params
from chattune.train.preprocess import PreprocessConfig, run_preprocess
from chattune.workspace.markers import is_done
from tests.jobs.conftest import write_chats

pytestmark = pytest.mark.integration

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
STEP_LINE = re.compile(r"^step (\d+)/\d+ .*")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_llama_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("ft-data")
    train = write_chats(root / "train.jsonl", 60, seed=3, turns=2)
    out = root / "pre"
    run_preprocess(
        PreprocessConfig(
            train_file=train, model_dir=tiny_llama_dir, max_seq_length=64, output_dir=out
        ),
        lambda _m: None,
    )
    assert (out / "validation.parquet").is_file()
    return out


def train(
    tmp_path: Path, model_dir: Path, data_dir: Path, restarted: bool = False, **params
) -> dict[str, float]:
    base = {
        "max_steps": 8,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "save_steps": 100,
        "evaluation_strategy": "disable",
        "apply_lora": True,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    cfg = FinetuneConfig(
        model_dir=model_dir,
        data_dir=data_dir,
        output_dir=tmp_path / "out",
        params=parse_params({**base, **params}),
        lora_target_modules=TARGETS,
        max_seq_length=64,
        restarted=restarted,
    )
    return run_finetune(cfg)


def logged(out: str, key: str) -> list[float]:
    """The value of `key` on each `step N/M ...` line the step printed."""
    values = []
    for line in out.splitlines():
        if STEP_LINE.match(line) and (m := re.search(rf"\b{key}=([-0-9.e+]+)", line)):
            values.append(float(m.group(1)))
    return values


@pytest.mark.parametrize(
    "scheduler",
    ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
)
def test_every_scheduler_drives_the_learning_rate(
    scheduler, tmp_path, tiny_llama_dir, data_dir, capsys
) -> None:
    from transformers import get_scheduler

    train(
        tmp_path, tiny_llama_dir, data_dir, lr_scheduler_type=scheduler, warmup_steps=2, max_steps=8
    )
    lrs = logged(capsys.readouterr().out, "learning_rate")
    assert len(lrs) == 8
    # what transformers' own scheduler gives for these settings, step by step
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = get_scheduler(scheduler, opt, num_warmup_steps=2, num_training_steps=8)
    expected = []
    for _ in range(8):
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(expected, rel=1e-3, abs=1e-9)
    if scheduler == "constant":  # no warm-up: transformers' "constant" ignores warmup_steps
        assert lrs == pytest.approx([3e-3] * 8, rel=1e-3)
        return
    assert lrs[0] < lrs[2]  # warm-up from below
    if scheduler == "constant_with_warmup":
        assert lrs[2:] == pytest.approx([3e-3] * 6, rel=1e-3)
    else:
        assert lrs[-1] < lrs[2]  # the decaying ones decay


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_losses(
    lora, tmp_path, tiny_llama_dir, data_dir, capsys, monkeypatch
) -> None:
    import transformers.modeling_utils as mu

    calls = {"n": 0}
    real = mu.checkpoint  # what enabling activation checkpointing wraps each layer with

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counting)
    train(tmp_path / "plain", tiny_llama_dir, data_dir, apply_lora=lora, max_steps=4)
    plain = logged(capsys.readouterr().out, "train_loss")
    assert calls["n"] == 0
    train(
        tmp_path / "gc",
        tiny_llama_dir,
        data_dir,
        apply_lora=lora,
        max_steps=4,
        gradient_checkpointing=True,
    )
    checkpointed = logged(capsys.readouterr().out, "train_loss")
    assert calls["n"] >= 4 * 2  # every decoder layer, every step
    assert checkpointed == pytest.approx(plain, rel=1e-4)


def test_early_stopping_stops_when_eval_loss_stops_improving(
    tmp_path, tiny_llama_dir, data_dir, capsys
) -> None:
    # a learning rate this high makes the eval loss worse after the first evaluation
    metrics = train(
        tmp_path,
        tiny_llama_dir,
        data_dir,
        apply_lora=False,
        learning_rate=0.5,
        max_steps=40,
        evaluation_strategy="steps",
        eval_steps=2,
        apply_early_stopping=True,
        early_stopping_patience=1,
    )
    assert metrics["global_step"] < 40
    evals = logged(capsys.readouterr().out, "eval_loss")
    assert len(evals) >= 2 and min(evals[1:]) >= evals[0] - 1e-6


@pytest.mark.parametrize(("limit", "kept"), [(1, 1), (-1, 4)])
def test_save_total_limit_keeps_that_many_checkpoints(
    limit, kept, tmp_path, tiny_llama_dir, data_dir
) -> None:
    train(tmp_path, tiny_llama_dir, data_dir, max_steps=8, save_steps=2, save_total_limit=limit)
    ckpts = sorted((tmp_path / "out" / "checkpoints").glob("checkpoint-*"))
    assert len(ckpts) == kept
    assert ckpts[-1].name == "checkpoint-8"  # the newest is always kept
    assert all(is_done(c) for c in ckpts)


def test_deepspeed_without_cuda_says_so_and_trains(tmp_path, tiny_llama_dir, data_dir, capsys):
    metrics = train(
        tmp_path, tiny_llama_dir, data_dir, apply_deepspeed=True, deepspeed_stage=3, max_steps=2
    )
    assert "no CUDA device; running without DeepSpeed" in capsys.readouterr().out
    assert metrics["global_step"] == 2


@pytest.mark.parametrize("bf16_cpu", [True, False])
def test_fp16_on_cpu(bf16_cpu, monkeypatch, capsys) -> None:
    monkeypatch.setattr("chattune.host.machine.cpu_bf16_supported", lambda: bf16_cpu)
    params = parse_params({"precision": "16"})
    if bf16_cpu:
        with pytest.warns(UserWarning, match="runs as bf16"):
            assert ft._precision(params, cuda=False) == (True, False)
        assert "training in bf16 instead" in capsys.readouterr().out
    else:
        assert ft._precision(params, cuda=False) == (False, False)
        assert "training in fp32 instead" in capsys.readouterr().out
    assert ft._precision(params, cuda=True) == (False, True)  # real fp16 on GPUs
    assert ft._precision(parse_params({"precision": "32"}), cuda=False) == (False, False)


def test_the_log_says_which_precision_trained(tmp_path, tiny_llama_dir, data_dir, capsys):
    """precision bf16 trains LoRA with bf16 base weights and autocast where the CPU has bf16
    instructions, and in fp32 where it has not; the job log says which."""
    from chattune.host.machine import cpu_bf16_supported

    metrics = train(tmp_path, tiny_llama_dir, data_dir, precision="bf16", max_steps=1)
    assert metrics["global_step"] == 1
    out = capsys.readouterr().out
    if cpu_bf16_supported():
        assert "precision: bf16 (asked bf16; weights bfloat16, autocast)" in out
    else:
        assert "precision: fp32 (asked bf16; weights float32)" in out


@pytest.mark.parametrize("gpu_bf16", [True, False])
def test_bf16_on_a_gpu_without_it_is_fp16(gpu_bf16, monkeypatch, capsys) -> None:
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: gpu_bf16)
    got = ft._precision(parse_params({"precision": "bf16"}), cuda=True)
    assert got == ((True, False) if gpu_bf16 else (False, True))
    assert ("training in fp16 instead" in capsys.readouterr().out) is not gpu_bf16


def test_smollm2_cards_default_to_bf16() -> None:
    """bf16 LoRA is the measured fast path (1.6-1.8x fp32 a step on an AVX512-BF16 CPU, eval loss
    within 1%, BENCHMARKS.md); the cards ask for it, and `_precision` falls back where the
    hardware lacks it."""
    from chattune.models.card import builtin_cards

    for name in ("SmolLM2-135M-Instruct", "SmolLM2-360M-Instruct"):
        assert parse_params(builtin_cards()[name].model_specific_defaults).precision == "bf16"


@pytest.mark.parametrize("stage", ["2", "3"])
def test_deepspeed_config_is_written_where_cuda_and_deepspeed_exist(
    stage, tmp_path, monkeypatch
) -> None:
    import json
    import sys
    import types

    monkeypatch.setitem(sys.modules, "deepspeed", types.ModuleType("deepspeed"))
    cfg = FinetuneConfig(
        model_dir=tmp_path,
        data_dir=tmp_path,
        output_dir=tmp_path,
        params=parse_params({"apply_deepspeed": "true", "deepspeed_stage": stage}),
        lora_target_modules=TARGETS,
        max_seq_length=64,
    )
    path = ft._deepspeed_config(cfg, cuda=True)
    ds = json.loads(Path(path).read_text())
    assert ds["zero_optimization"]["stage"] == int(stage)
    assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (
        stage == "3"
    )
    # the Trainer fills the "auto" values from its own arguments
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    assert ft._deepspeed_config(cfg, cuda=False) is None


def test_the_step_keeps_freed_memory_for_reuse(tmp_path, tiny_llama_dir, data_dir, monkeypatch):
    from chattune.host import malloc

    calls: list[bool | None] = []
    monkeypatch.setattr(malloc, "tune_malloc", lambda enable=None: calls.append(enable) or "")
    train(tmp_path, tiny_llama_dir, data_dir, max_steps=1)
    assert calls == [None]  # once, following CHATTUNE_MALLOC


def test_a_bad_attention_kernel_fails_before_training(
    tmp_path, tiny_llama_dir, data_dir, monkeypatch
):
    from chattune.errors import InvalidParameter

    monkeypatch.setenv("CHATTUNE_ATTENTION_KERNEL", "flash3")
    with pytest.raises(InvalidParameter, match=r"CHATTUNE_ATTENTION_KERNEL='flash3'.*auto, sdpa"):
        train(tmp_path, tiny_llama_dir, data_dir, max_steps=1)
    assert not (tmp_path / "out" / "checkpoints").exists()


def steps_logged(out: str) -> list[int]:
    """The steps the run trained, from its `step N/M ...` lines (the summary repeats the last)."""
    return sorted({int(m.group(1)) for line in out.splitlines() if (m := STEP_LINE.match(line))})


def test_resume_false_starts_fresh_and_drops_an_earlier_runs_checkpoints(
    tmp_path, tiny_llama_dir, data_dir, capsys
) -> None:
    train(tmp_path, tiny_llama_dir, data_dir, max_steps=2, save_steps=2)
    ckpts = tmp_path / "out" / "checkpoints"
    assert is_done(ckpts / "checkpoint-2")
    capsys.readouterr()
    metrics = train(tmp_path, tiny_llama_dir, data_dir, max_steps=4, resume_from_checkpoint=False)
    out = capsys.readouterr().out
    assert "resuming from" not in out and "removing earlier checkpoints" in out
    assert steps_logged(out) == [1, 2, 3, 4] and metrics["global_step"] == 4
    assert [c.name for c in ckpts.glob("checkpoint-*")] == ["checkpoint-4"]  # saved at the end


def test_resume_true_continues_from_the_newest_checkpoint_in_the_output(
    tmp_path, tiny_llama_dir, data_dir, capsys
) -> None:
    train(tmp_path, tiny_llama_dir, data_dir, resume_from_checkpoint=True, max_steps=2)
    out = capsys.readouterr().out
    assert "no intact checkpoint in" in out and "starting fresh" in out
    assert steps_logged(out) == [1, 2]
    metrics = train(tmp_path, tiny_llama_dir, data_dir, resume_from_checkpoint=True, max_steps=4)
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'out' / 'checkpoints' / 'checkpoint-2'}" in out
    assert steps_logged(out) == [3, 4] and metrics["global_step"] == 4


def test_resume_from_a_checkpoint_path(tmp_path, tiny_llama_dir, data_dir, capsys) -> None:
    train(tmp_path / "a", tiny_llama_dir, data_dir, max_steps=2, save_steps=2)
    given = tmp_path / "a" / "out" / "checkpoints" / "checkpoint-2"
    capsys.readouterr()
    train(tmp_path / "b", tiny_llama_dir, data_dir, resume_from_checkpoint=given, max_steps=4)
    out = capsys.readouterr().out
    assert f"resuming from {given}" in out and steps_logged(out) == [3, 4]
    assert is_done(given)  # the given checkpoint is read, never changed
    # the same job restarted (`chattune job resume`) goes on from its own newest checkpoint
    train(
        tmp_path / "b",
        tiny_llama_dir,
        data_dir,
        restarted=True,
        resume_from_checkpoint=given,
        max_steps=6,
    )
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'b' / 'out' / 'checkpoints' / 'checkpoint-4'}" in out
    assert steps_logged(out) == [5, 6]


def test_a_checkpoint_path_of_the_wrong_kind_fails_before_training(
    tmp_path, tiny_llama_dir, data_dir
) -> None:
    train(tmp_path / "lora", tiny_llama_dir, data_dir, max_steps=1)
    lora_ckpt = tmp_path / "lora" / "out" / "checkpoints" / "checkpoint-1"
    with pytest.raises(
        InvalidParameter, match="holds a LoRA adapter, but this job trains the full"
    ):
        train(
            tmp_path, tiny_llama_dir, data_dir, apply_lora=False, resume_from_checkpoint=lora_ckpt
        )
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_damaged_newest_checkpoint_is_skipped_and_training_resumes(
    lora, tmp_path, tiny_llama_dir, data_dir, capsys
) -> None:
    train(tmp_path, tiny_llama_dir, data_dir, max_steps=4, save_steps=2, apply_lora=lora)
    ckpts = tmp_path / "out" / "checkpoints"
    weights = (
        ckpts / "checkpoint-4" / ("adapter_model.safetensors" if lora else "model.safetensors")
    )
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    metrics = train(
        tmp_path,
        tiny_llama_dir,
        data_dir,
        restarted=True,
        max_steps=6,
        save_steps=2,
        apply_lora=lora,
    )
    out = capsys.readouterr().out
    assert (
        f"checkpoint-4 skipped: {weights.name} is 100 bytes, manifest says {size:,}; removing it"
        in out
    )
    assert f"resuming from {ckpts / 'checkpoint-2'}" in out
    assert steps_logged(out) == [3, 4, 5, 6] and metrics["global_step"] == 6
    assert all(is_done(ckpts / f"checkpoint-{s}") for s in (2, 4, 6))  # step 4 saved anew
