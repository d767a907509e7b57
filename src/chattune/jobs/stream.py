"""`jobs.stream`: print a job's log as it grows, with a progress bar during finetune,
then a summary. Stopping the stream (Ctrl-C) does not stop the job."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from chattune.jobs.store import JobRecord, get_job, log_path, progress_path
from chattune.workspace import Workspace

POLL_S = 0.5


def _read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stream_job(
    ws: Workspace,
    name: str,
    console: Console | None = None,
    emit: Callable[[str], None] | None = None,
) -> JobRecord:
    """Follow job `name` until it ends; returns its final record.

    Args:
        console: where the log and the progress bar go (default: a new rich Console).
        emit: if given, each log line is passed to it instead (no progress bar).
    """
    console = console or Console()
    log = log_path(ws, name)
    prog_file = progress_path(ws, name)
    offset = 0
    bar = (
        None
        if emit
        else Progress(
            TextColumn("[bold]finetune"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
    )
    task = None
    try:
        if bar:
            bar.start()
        while True:
            job = get_job(ws, name)
            if log.is_file():
                with log.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                # only whole lines: a line being written is printed on the next poll
                cut = chunk.rfind(b"\n") + 1
                offset += cut
                for line in chunk[:cut].decode(errors="replace").splitlines():
                    (
                        emit
                        or (
                            lambda s: console.print(
                                s, markup=False, highlight=False, soft_wrap=True
                            )
                        )
                    )(line)
            prog = _read_progress(prog_file)
            if bar and prog and prog.get("max_steps"):
                info = " ".join(
                    f"{k}={prog[k]:.4g}" for k in ("train_loss", "tokens_per_second") if k in prog
                )
                if task is None:
                    task = bar.add_task("finetune", total=prog["max_steps"], info=info)
                bar.update(task, completed=prog["step"], total=prog["max_steps"], info=info)
            if job.finished:
                return job
            time.sleep(POLL_S)
    finally:
        if bar:
            bar.stop()


def summary_lines(job: JobRecord) -> list[str]:
    """The end-of-stream summary: status, duration, step states, metrics, outputs."""
    lines = ["Execution Summary", f"RunId: {job.name}", f"Status: {job.status}"]
    if job.started_at and job.ended_at:
        lines.append(f"Duration: {job.ended_at - job.started_at:.1f}s")
    for step, rec in job.steps.items():
        extra = " (cached)" if rec.get("cached") else ""
        lines.append(f"  {step:<13} {rec.get('status', '?')}{extra}")
    for k, v in sorted(job.metrics.items()):
        lines.append(f"  {k} = {v:.4f}")
    for k, v in job.outputs.items():
        lines.append(f"  output {k}: {v}")
    if job.error:
        lines.append(f"Error: {job.error}")
    return lines
