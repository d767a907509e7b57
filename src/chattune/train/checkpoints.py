"""Finetune checkpoints: recording one as complete, and choosing the one a run resumes from.

A checkpoint is complete when the Trainer has written all its files: `finish_checkpoint`
then records each file's size and sha256 (`chattune.workspace.manifest`) and marks the folder
done (`chattune.workspace.markers`), in that order. A folder without the marker is a save
that was killed halfway and is removed.

A complete checkpoint can still be damaged later (a full disk, a file truncated or edited by
hand). Resuming checks before loading: the newest checkpoint that matches its manifest wins,
and each newer one that does not is named in the log with the reason, then removed, so a bad
checkpoint never blocks a job's resume. Checkpoints saved before manifests existed are
checked by their safetensors headers (a file cut short no longer matches the size its header
gives).

Example:
    >>> resume = checkpoint_to_resume(params, out / "checkpoints", restarted=True, log=print)
    checkpoint-20 skipped: model.safetensors is 100 bytes, manifest says 9,834,112; removing it
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from chattune.errors import InvalidParameter
from chattune.train.params import RESUME_FIX, FinetuneParams, resume_checkpoint_problem
from chattune.workspace.manifest import has_manifest, manifest_problem, write_manifest
from chattune.workspace.markers import is_done, mark_done

LEGACY_COMPLETE = "chattune_complete"  # the done marker of checkpoints saved before _SUCCESS
_SAFETENSORS_HEADER = 8  # bytes: the little-endian length of the JSON header that follows

Log = Callable[[str], None]


def finish_checkpoint(ckpt: Path, step: int) -> None:
    """Record the files of a checkpoint the Trainer has finished writing, then mark it done."""
    write_manifest(ckpt)
    mark_done(ckpt, {"step": step})


def complete_checkpoints(ckpt_dir: Path, remove_incomplete: bool = True) -> list[Path]:
    """The checkpoints marked done, newest first; incomplete ones are removed when asked
    (only one process of a multi-process run removes)."""
    if not ckpt_dir.is_dir():
        return []
    done: list[tuple[int, Path]] = []
    for d in ckpt_dir.glob("checkpoint-*"):
        if is_done(d) or (d / LEGACY_COMPLETE).is_file():
            done.append((int(d.name.split("-")[-1]), d))
        elif remove_incomplete:
            shutil.rmtree(d, ignore_errors=True)  # a save that was killed halfway
    return [d for _, d in sorted(done, reverse=True)]


def checkpoint_damage(ckpt: Path) -> str | None:
    """Why the complete checkpoint `ckpt` cannot be resumed from, or None when it is intact.

    With a manifest: every file listed has its size and sha256. Without one (saved before
    manifests existed, or by another program): every safetensors file is as long as its
    header says.
    """
    if has_manifest(ckpt):
        return manifest_problem(ckpt)
    for path in sorted(ckpt.rglob("*.safetensors")):
        if problem := _safetensors_problem(path, path.relative_to(ckpt).as_posix()):
            return problem
    return None


def _safetensors_problem(path: Path, rel: str) -> str | None:
    """Whether a safetensors file is cut short: its header gives every tensor's byte range."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_SAFETENSORS_HEADER)
        n = int.from_bytes(head, "little") if len(head) == _SAFETENSORS_HEADER else size
        if _SAFETENSORS_HEADER + n > size:
            return f"{rel} is {size:,} bytes, too short for the safetensors header it starts with"
        try:
            header = json.loads(f.read(n))
            end = max(
                (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{rel} has no readable safetensors header"
    if (want := _SAFETENSORS_HEADER + n + end) != size:
        return f"{rel} is {size:,} bytes, its safetensors header says {want:,}"
    return None


def newest_intact_checkpoint(ckpt_dir: Path, log: Log, remove: bool = True) -> Path | None:
    """The newest complete checkpoint in `ckpt_dir` that is not damaged, or None.

    Each newer damaged one is logged (`checkpoint-20 skipped: ...`) and, with `remove`,
    deleted: a later save of the same step writes a fresh folder.
    """
    for ckpt in complete_checkpoints(ckpt_dir, remove_incomplete=remove):
        problem = checkpoint_damage(ckpt)
        if problem is None:
            return ckpt
        log(f"{ckpt.name} skipped: {problem}{'; removing it' if remove else ''}")
        if remove:
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def checkpoint_to_resume(
    params: FinetuneParams, ckpt_dir: Path, *, restarted: bool, log: Log, main: bool = True
) -> Path | None:
    """The checkpoint training starts from, or None for the base model.

    A restarted run of a job (`chattune job resume`) continues from its own newest intact
    checkpoint. Otherwise `resume_from_checkpoint` decides: true takes the newest intact
    checkpoint in the output folder (left by an earlier run with the same inputs), a path
    takes that checkpoint if it is intact, false starts fresh and removes the checkpoints an
    earlier run left, so that none of them is mistaken for this run's later.

    Args:
        params: the job's parameters (`resume_from_checkpoint`, `apply_lora`).
        ckpt_dir: this run's checkpoint folder.
        restarted: this job ran finetune before.
        log: called with each line for the job's log.
        main: this is the process that removes folders (rank 0 of a multi-process run).

    Raises:
        InvalidParameter: the given checkpoint folder cannot be resumed from, or is damaged.
    """
    asked = params.resume_from_checkpoint
    if restarted or asked is True:
        own = newest_intact_checkpoint(ckpt_dir, log, remove=main)
        if own is not None:
            return own
    if isinstance(asked, Path):
        problem = resume_checkpoint_problem(asked, params.apply_lora)
        if problem:
            raise InvalidParameter(problem + ".", fix=RESUME_FIX)
        if damage := checkpoint_damage(asked):  # the sizes were compared above: the hashes
            raise InvalidParameter(
                f"`resume_from_checkpoint` {str(asked)!r} is damaged: {damage}.", fix=RESUME_FIX
            )
        return asked
    if asked is True or restarted:
        log(f"no intact checkpoint in {ckpt_dir}: starting fresh")
    elif main and any(ckpt_dir.glob("checkpoint-*")):
        log(f"resume_from_checkpoint is false: removing earlier checkpoints in {ckpt_dir}")
        shutil.rmtree(ckpt_dir)
    return None
