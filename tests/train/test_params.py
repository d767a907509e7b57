"""The pipeline parameters: each described, `resume_from_checkpoint`'s three forms, the
checks a checkpoint folder must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from chattune.jobs.spec import JobSpec
from chattune.train.params import (
    FinetuneParams,
    param_docs,
    parse_params,
    resume_checkpoint_problem,
)


@pytest.mark.parametrize("model", [FinetuneParams, JobSpec])
def test_every_field_says_what_it_does(model) -> None:
    undocumented = [n for n, f in model.model_fields.items() if len(f.description or "") < 15]
    assert not undocumented, f"{model.__name__} fields without a description: {undocumented}"


def test_param_docs_give_type_default_and_meaning_of_every_parameter() -> None:
    docs = {d.name: d for d in param_docs()}
    assert list(docs) == list(FinetuneParams.model_fields)
    assert docs["apply_lora"].type == "true | false" and docs["apply_lora"].default == "false"
    assert docs["learning_rate"].type == "float" and docs["learning_rate"].default == "2e-05"
    assert docs["optim"].type == "adamw_torch | adafactor"
    assert docs["deepspeed"].default == "none"
    assert docs["resume_from_checkpoint"].type == "true | false | path"
    # the defaults listed are the ones a job gets
    defaults = FinetuneParams().to_component_dict()
    assert {n: d.default for n, d in docs.items() if n in defaults} == defaults


@pytest.mark.parametrize(
    ("given", "expected"),
    [("true", True), ("False", False), (True, True), ("", False), ("false", False)],
)
def test_resume_from_checkpoint_flags(given, expected) -> None:
    assert parse_params({"resume_from_checkpoint": given}).resume_from_checkpoint is expected


def test_resume_from_checkpoint_path_is_made_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = parse_params({"resume_from_checkpoint": "out/checkpoint-4"})
    assert p.resume_from_checkpoint == tmp_path / "out" / "checkpoint-4"
    # the job stores the component's strings; the runner reads the same path back
    stored = p.to_component_dict()["resume_from_checkpoint"]
    assert parse_params({"resume_from_checkpoint": stored}) == p
    # and the finetune process its config file
    assert FinetuneParams.model_validate_json(p.model_dump_json()) == p


def _checkpoint(path: Path, *files: str) -> Path:
    path.mkdir(parents=True)
    for f in files:
        (path / f).write_text("{}")
    return path


def test_a_checkpoint_folder_must_be_one_the_trainer_saved(tmp_path: Path) -> None:
    lora = _checkpoint(tmp_path / "lora", "trainer_state.json", "adapter_model.safetensors")
    full = _checkpoint(tmp_path / "full", "trainer_state.json", "model.safetensors")
    model = _checkpoint(tmp_path / "model", "config.json", "model.safetensors")
    assert resume_checkpoint_problem(lora, apply_lora=True) is None
    assert resume_checkpoint_problem(full, apply_lora=False) is None
    cases = {
        (tmp_path / "nope", True): "does not exist",
        (lora / "trainer_state.json", True): "is a file, not a checkpoint folder",
        (model, False): "not a transformers checkpoint folder (no trainer_state.json)",
        (full, True): "holds no LoRA adapter, but this job trains one (`apply_lora` true)",
        (lora, False): "holds a LoRA adapter, but this job trains the full model",
    }
    for (path, apply_lora), says in cases.items():
        problem = resume_checkpoint_problem(path, apply_lora)
        assert problem is not None and says in problem, (path, problem)
        assert problem.startswith(f"`resume_from_checkpoint` '{path}'")
