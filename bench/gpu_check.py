"""`make gpu-check`: what only a GPU machine can show, run as one script with one table.

On a machine with CUDA, in a scratch workspace (SmolLM2-135M-Instruct imported offline,
chitchat at 2%), each check runs one short job through the CLI (`chattune job create
--stream`) and reads back its status, its final train loss, whether DeepSpeed really ran
(the finetune step says when it runs without it) and its wall time:

| check | what it runs |
| --- | --- |
| lora-zero2-bf16 | LoRA, DeepSpeed ZeRO-2, bf16 |
| lora-zero3-bf16 | LoRA, DeepSpeed ZeRO-3, bf16 |
| full-zero3-fp16 | full fine-tuning, DeepSpeed ZeRO-3, precision 16 (fp16) |
| lora-bf16 | LoRA, bf16, no DeepSpeed: the baseline of the three above |
| lora-2gpu-torchrun | LoRA, bf16, two processes under torchrun (2+ GPUs only) |
| vllm-parity | the vLLM engine's tests (`tests/serving/vllm`: parity with the built-in |
| | engine), where `CHATTUNE_VLLM` names a vLLM environment |

A check the machine cannot run (one GPU for torchrun, no vLLM) is listed as skipped with
the reason. Where CUDA is missing the script says so and exits 2: `--dry-run` prints the
commands it would run (tests check them on CPUs). The table goes to stdout and, with the
machine and versions, to `bench/results/gpu-check-<stamp>.json`.

    make gpu-check          # or: PYTHONPATH=$PWD/src .venv/bin/python bench/gpu_check.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, parser, utc_stamp, write_result

MODEL = "SmolLM2-135M-Instruct"
SHORT = {"max_steps": "20", "save_steps": "10", "logging_steps": "5", "eval_sample_size": "4",
         "eval_max_new_tokens": "16", "max_seq_length": "512"}  # fmt: skip
NO_DEEPSPEED = ("running without DeepSpeed", "deepspeed is not installed")


@dataclass(frozen=True)
class Check:
    name: str
    params: dict[str, str] = field(default_factory=dict)
    gpus: int = 1  # GPUs it needs
    pytest: str | None = None  # a test path to run instead of a job
    needs_vllm: bool = False


CHECKS = (
    Check("lora-zero2-bf16", {"apply_lora": "true", "apply_deepspeed": "true",
                              "deepspeed_stage": "2", "precision": "bf16"}),
    Check("lora-zero3-bf16", {"apply_lora": "true", "apply_deepspeed": "true",
                              "deepspeed_stage": "3", "precision": "bf16"}),
    Check("full-zero3-fp16", {"apply_lora": "false", "apply_deepspeed": "true",
                              "deepspeed_stage": "3", "precision": "16"}),
    Check("lora-bf16", {"apply_lora": "true", "apply_deepspeed": "false", "precision": "bf16"}),
    Check("lora-2gpu-torchrun", {"apply_lora": "true", "precision": "bf16",
                                 "number_of_gpu_to_use_finetuning": "2"}, gpus=2),
    Check("vllm-parity", pytest="tests/serving/vllm", needs_vllm=True),
)  # fmt: skip


def job_command(check: Check, data: Path) -> list[str]:
    """The `chattune job create` command line of a job check."""
    sets = [x for k, v in {**SHORT, **check.params}.items() for x in ("--set", f"{k}={v}")]
    return ["chattune", "job", "create", "--model", MODEL, "--name", check.name,
            "--train-file", str(data / "train_sft.jsonl"), "--test-file",
            str(data / "test_sft.jsonl"), *sets, "--stream", "--force-rerun"]  # fmt: skip


def setup_commands(data: Path) -> list[list[str]]:
    """Import the model and download the data, offline."""
    return [
        ["chattune", "model", "import", MODEL],
        ["chattune", "data", "download", "--dataset", "chitchat", "--download-dir", str(data),
         "--split-pc", "2"],
    ]  # fmt: skip


def plan(data: Path) -> list[tuple[Check, list[str]]]:
    """Each check with the command it runs."""
    return [
        (c, [sys.executable, "-m", "pytest", "-q", c.pytest] if c.pytest else job_command(c, data))
        for c in CHECKS
    ]


def skip_reason(check: Check, gpus: int, vllm: str | None) -> str | None:
    if check.gpus > gpus:
        return f"needs {check.gpus} GPUs, this machine has {gpus}"
    if check.needs_vllm and not vllm:
        return "no vLLM: set CHATTUNE_VLLM or run `chattune engine install vllm`"
    return None


def deepspeed_used(check: Check, log: str) -> str:
    """ZeRO-N where the step ran DeepSpeed; else why not, from its own log line."""
    if check.params.get("apply_deepspeed") != "true":
        return "off"
    for note in NO_DEEPSPEED:
        if note in log:
            return f"no ({note})"
    return f"ZeRO-{check.params['deepspeed_stage']}"


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    if cmd[0] == "chattune":
        cmd = [sys.executable, "-m", "chattune", *cmd[1:]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=ROOT)  # fmt: skip
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-4000:])
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def run_checks(workdir: Path, timeout: float) -> list[dict[str, Any]]:
    import torch

    gpus = torch.cuda.device_count()
    vllm = os.environ.get("CHATTUNE_VLLM")
    env = {**os.environ, "CHATTUNE_HOME": str(workdir / "workspace"), "PYTHONUNBUFFERED": "1"}
    data = workdir / "chitchat"
    for cmd in setup_commands(data):
        code, out, _ = _run(cmd, env, timeout)
        if code:
            raise SystemExit(f"setup failed ({' '.join(cmd)}):\n{out[-2000:]}")
    rows = []
    for check, cmd in plan(data):
        row: dict[str, Any] = {"check": check.name, "command": " ".join(cmd)}
        if reason := skip_reason(check, gpus, vllm):
            rows.append({**row, "status": "skipped", "why": reason})
            continue
        code, out, wall = _run(cmd, env, timeout)
        row.update(status="passed" if code == 0 else f"failed ({code})", wall_s=round(wall, 1))
        if not check.pytest:
            shown = subprocess.run([sys.executable, "-m", "chattune", "job", "show", check.name,
                                    "--json"], env=env, capture_output=True, text=True,
                                   check=False)  # fmt: skip
            metrics = json.loads(shown.stdout).get("metrics", {}) if shown.returncode == 0 else {}
            row.update(train_loss=metrics.get("train_loss"), deepspeed=deepspeed_used(check, out))
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], card: str) -> str:
    lines = [f"| check ({card}) | status | DeepSpeed | train loss | wall s |",
             "| --- | --- | --- | ---: | ---: |"]  # fmt: skip
    for r in rows:
        loss = r.get("train_loss")
        status = r["status"] + (f": {r['why']}" if r.get("why") else "")
        shown = "" if loss is None else f"{loss:.4f}"
        lines.append(f"| {r['check']} | {status} | {r.get('deepspeed', '')} | {shown} | "
                     f"{r.get('wall_s', '')} |")  # fmt: skip
    return "\n".join(lines)


def gpu_name() -> str:
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        names = [x.strip() for x in out.stdout.splitlines() if x.strip()]
        if names:
            return f"{len(names)} x {names[0]}"
    return "no GPU"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per check")
    a = ap.parse_args(argv)
    if a.dry_run:
        data = Path("<workdir>/chitchat")
        for cmd in setup_commands(data):
            print(" ".join(cmd))
        for check, cmd in plan(data):
            need = f"  # needs {check.gpus} GPUs" if check.gpus > 1 else ""
            print(" ".join(cmd) + need + ("  # needs vLLM" if check.needs_vllm else ""))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check needs CUDA, and this machine has none: nothing run. "
              "`--dry-run` prints what it would run.", file=sys.stderr)  # fmt: skip
        return 2
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="chattune-gpu-check-"))
    rows = run_checks(workdir, a.timeout)
    card = gpu_name()
    print(table(rows, card))
    record = {"bench": "gpu_check", "card": card, "rows": rows}
    print(write_result(ROOT / "bench" / "results", "gpu-check", utc_stamp(), record,
                       ["deepspeed", "vllm"]))  # fmt: skip
    return 0 if all(r["status"] in ("passed", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
