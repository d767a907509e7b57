"""Choosing the checkpoint a finetune run resumes from: complete, then intact, newest first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from chattune.errors import InvalidParameter
from chattune.train.checkpoints import (
    LEGACY_COMPLETE,
    checkpoint_damage,
    checkpoint_to_resume,
    complete_checkpoints,
    finish_checkpoint,
    newest_intact_checkpoint,
)
from chattune.train.params import parse_params, resume_checkpoint_problem
from chattune.workspace.manifest import MANIFEST
from chattune.workspace.markers import DONE, is_done

ADAPTER = "adapter_model.safetensors"


def _saved(ckpts: Path, step: int, finish: bool = True) -> Path:
    """A LoRA checkpoint as the Trainer writes it (real safetensors), finished by chattune."""
    folder = ckpts / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"lora_A": torch.full((8, 64), float(step))}, folder / ADAPTER)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if finish:
        finish_checkpoint(folder, step)
    return folder


def _truncate(path: Path, size: int = 100) -> int:
    before = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size)
    return before


def test_a_finished_checkpoint_has_a_manifest_then_the_marker(tmp_path: Path) -> None:
    ckpt = _saved(tmp_path, 5)
    assert is_done(ckpt) and (ckpt / MANIFEST).is_file()
    assert checkpoint_damage(ckpt) is None


def test_a_damaged_newest_checkpoint_is_skipped_named_and_removed(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        _saved(tmp_path, step)
    size = _truncate(tmp_path / "checkpoint-20" / ADAPTER)
    (tmp_path / "checkpoint-15" / "trainer_state.json").write_text('{"global_step": 99}')
    lines: list[str] = []
    assert newest_intact_checkpoint(tmp_path, lines.append) == tmp_path / "checkpoint-10"
    assert lines[0] == (
        f"checkpoint-20 skipped: {ADAPTER} is 100 bytes, manifest says {size:,}; removing it"
    )
    assert lines[1].startswith("checkpoint-15 skipped: trainer_state.json has changed")
    assert len(lines) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5"]


def test_without_removal_the_damaged_checkpoint_stays(tmp_path: Path) -> None:
    _saved(tmp_path, 5)
    _truncate(_saved(tmp_path, 10) / ADAPTER)
    lines: list[str] = []
    assert newest_intact_checkpoint(tmp_path, lines.append, remove=False) == tmp_path / (
        "checkpoint-5"
    )
    assert lines[0].startswith("checkpoint-10 skipped: ") and "removing" not in lines[0]
    assert (tmp_path / "checkpoint-10").is_dir()


def test_checkpoints_marked_by_older_versions_still_resume(tmp_path: Path) -> None:
    for step, marker in ((2, DONE), (4, LEGACY_COMPLETE), (6, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if marker:
            (folder / marker).write_text("{}")
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-4", tmp_path / "checkpoint-2"]
    assert not (tmp_path / "checkpoint-6").exists()  # a save killed halfway is removed
    assert newest_intact_checkpoint(tmp_path, print) == tmp_path / "checkpoint-4"


def test_a_checkpoint_without_manifest_is_checked_by_its_safetensors_header(
    tmp_path: Path,
) -> None:
    old = _saved(tmp_path, 4, finish=False)
    (old / DONE).write_text("{}")  # marked done by a chattune that wrote no manifest
    assert checkpoint_damage(old) is None
    size = old.joinpath(ADAPTER).stat().st_size
    _truncate(old / ADAPTER, size - 1)
    assert checkpoint_damage(old) == (
        f"{ADAPTER} is {size - 1:,} bytes, its safetensors header says {size:,}"
    )
    _truncate(old / ADAPTER, 100)
    assert checkpoint_damage(old) == f"{ADAPTER} is 100 bytes, its safetensors header says {size:,}"
    _truncate(old / ADAPTER, 20)  # the JSON header itself is cut
    assert checkpoint_damage(old) == (
        f"{ADAPTER} is 20 bytes, too short for the safetensors header it starts with"
    )
    (old / ADAPTER).write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00nope")
    assert checkpoint_damage(old) == f"{ADAPTER} has no readable safetensors header"


def test_resume_true_takes_the_newest_intact_one_or_starts_fresh(tmp_path: Path) -> None:
    params = parse_params({"apply_lora": True, "resume_from_checkpoint": True})
    _saved(tmp_path, 5)
    _truncate(_saved(tmp_path, 10) / ADAPTER)
    lines: list[str] = []
    found = checkpoint_to_resume(params, tmp_path, restarted=False, log=lines.append)
    assert found == tmp_path / "checkpoint-5"
    _truncate(tmp_path / "checkpoint-5" / ADAPTER)
    lines.clear()
    assert checkpoint_to_resume(params, tmp_path, restarted=False, log=lines.append) is None
    assert lines[0].startswith("checkpoint-5 skipped: ")
    assert lines[-1] == f"no intact checkpoint in {tmp_path}: starting fresh"


def test_a_restarted_job_skips_its_damaged_newest_checkpoint(tmp_path: Path) -> None:
    params = parse_params({"apply_lora": True})  # resume_from_checkpoint false
    _saved(tmp_path, 5)
    _truncate(_saved(tmp_path, 10) / ADAPTER)
    lines: list[str] = []
    found = checkpoint_to_resume(params, tmp_path, restarted=True, log=lines.append)
    assert found == tmp_path / "checkpoint-5" and lines[0].startswith("checkpoint-10 skipped")


def test_a_damaged_checkpoint_path_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path,
) -> None:
    given = _saved(tmp_path / "other-job", 20)
    size = _truncate(given / ADAPTER)
    params = parse_params({"apply_lora": True, "resume_from_checkpoint": str(given)})
    with pytest.raises(InvalidParameter) as err:
        checkpoint_to_resume(params, tmp_path / "mine", restarted=False, log=print)
    assert f"{ADAPTER} is 100 bytes, manifest says {size:,}" in err.value.message
    assert str(given) in err.value.message
    assert "to true (this job's newest intact checkpoint)" in (err.value.fix or "")
    assert given.is_dir()  # a given checkpoint is read, never changed
    # the job's creation refuses it already, by sizes alone
    problem = resume_checkpoint_problem(given, apply_lora=True)
    assert problem is not None and f"is damaged: {ADAPTER} is 100 bytes" in problem


def test_a_changed_checkpoint_path_is_refused_by_its_hash(tmp_path: Path) -> None:
    given = _saved(tmp_path / "other-job", 20)
    save_file({"lora_A": torch.full((8, 64), -1.0)}, given / ADAPTER)  # same size, new bytes
    assert resume_checkpoint_problem(given, apply_lora=True) is None  # sizes match
    params = parse_params({"apply_lora": True, "resume_from_checkpoint": str(given)})
    with pytest.raises(InvalidParameter, match=f"{ADAPTER} has changed since it was saved"):
        checkpoint_to_resume(params, tmp_path / "mine", restarted=False, log=print)
