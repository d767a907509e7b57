"""Shared parts of the benchmarks: the preamble every harness starts with (its shared flags,
the stamp that names a run's files, the result file with the machine and versions), the
matmul bound, child processes, medians, the host check, and the probe that times and counts
a Trainer-based training loop from outside it.

bench/ is a folder of scripts, not a package: `python bench/<harness>.py` puts bench/ first
on `sys.path`, so a harness imports this module as `common` (tests/bench/conftest.py does
the same for the tests).

Every contender runs in its own process (`run_child`), which writes one JSON result; its peak
RSS is read inside that process (`peak_rss_mb`, `getrusage(RUSAGE_SELF)`), because
`RUSAGE_CHILDREN` keeps the maximum over every child waited for, not each child's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100
VERSIONED = ("chattune", "torch", "transformers", "peft", "trl", "accelerate", "datasets")


class BenchFailed(RuntimeError):
    """A contender crashed or produced a result that cannot be right (non-finite loss...)."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the packages a benchmark result depends on (and of `extra`)."""
    out = {"python": platform.python_version()}
    for name in (*VERSIONED, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


MODEL_NAME = "SmolLM2-135M-Instruct"
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_DIR = BENCH / "results"  # JSON results, logs and plots, named <kind>-<stamp>
PROFILES_DIR = BENCH / "profiles"  # torch.profiler tables, one file per kind of step
DATA_DIR = ROOT / ".demo" / "chitchat_dataset"  # the splits that `make bench-inputs` writes
WORK_DIR = Path(tempfile.gettempdir()) / "chattune-bench"

# The flags that mean the same in every harness: name -> (flag, add_argument keywords).
SHARED_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "model_dir": (
        "--model-dir",
        {"type": Path, "help": f"the {MODEL_NAME} folder (default: the one in .demo/)"},
    ),
    "data_dir": (
        "--data-dir",
        {"type": Path, "default": DATA_DIR, "help": "the chitchat splits (`make bench-inputs`)"},
    ),
    "repeats": ("--repeats", {"type": int, "default": 3, "help": "repeats; medians are reported"}),
    "results_dir": (
        "--results-dir",
        {"type": Path, "default": RESULTS_DIR, "help": "where the JSON result is written"},
    ),
    "work_dir": (
        "--work-dir",
        {"type": Path, "default": WORK_DIR, "help": "scratch folder; a run uses <kind>-<stamp>"},
    ),
}


def parser(doc: str, *shared: str) -> argparse.ArgumentParser:
    """The argument parser every harness starts from: described by the first paragraph of
    its docstring `doc`, with the flags of `SHARED_FLAGS` named in `shared`, in that order.

    Raises:
        KeyError: a name in `shared` is not one of `SHARED_FLAGS`.
    """
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name in shared:
        flag, kwargs = SHARED_FLAGS[name]
        ap.add_argument(flag, **kwargs)
    return ap


def utc_stamp(when: datetime | None = None) -> str:
    """`when` (default: now) as the UTC stamp that names a run's files, e.g. 20261204T204330Z."""
    return (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def write_result(
    results_dir: Path,
    kind: str,
    stamp: str,
    record: dict[str, Any],
    extra_versions: Sequence[str] = (),
) -> Path:
    """Write `record` to `<results_dir>/<kind>-<stamp>.json` with this machine
    (`machine_record`) and the installed versions (`versions(extra_versions)`); return the path.
    """
    path = results_dir / f"{kind}-{stamp}.json"
    write_json(path, {"machine": machine_record(), "versions": versions(extra_versions), **record})
    return path


def default_model_dir() -> Path:
    """The SmolLM2 checkpoint that `make demo` / `make bench-inputs` import into `.demo/`."""
    models = ROOT / ".demo" / "workspace" / "models" / MODEL_NAME
    found = sorted(p.parent for p in models.rglob("config.json")) if models.is_dir() else []
    if not found:
        raise SystemExit(
            f"no {MODEL_NAME} under {models}: pass --model-dir (a folder with config.json and "
            "the tokenizer), or run `make bench-inputs` to import it"
        )
    return found[-1]


def machine_record() -> dict[str, Any]:
    """CPU model, cores, memory, bf16 support and torch threads of this machine."""
    import torch

    from chattune.host.machine import cpu_bf16_supported, local_machine

    m = local_machine()
    rec = {k: v for k, v in vars(m).items() if isinstance(v, str | int | float | bool)}
    rec.update(
        platform=platform.platform(),
        cpu_bf16_supported=cpu_bf16_supported(),
        torch_threads=torch.get_num_threads(),
        cuda=torch.cuda.is_available(),
    )
    return rec


def matmul_gflops(dtype_name: str = "float32", n: int = 2048, seconds: float = 2.0) -> float:
    """Best measured GFLOP/s of an (n x n) @ (n x n) torch matmul in `dtype_name`.

    One warm-up, then repeats until `seconds` have passed; the best repeat counts (the bound
    is what the hardware can reach, not an average disturbed by other processes).
    """
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up: thread pool, kernel choice
    best = math.inf
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    return 2 * n**3 / best / 1e9


def run_child(argv: Sequence[str], result_path: Path, timeout_s: float) -> dict[str, Any]:
    """Run one contender as `python argv...`; return the JSON it wrote to `result_path`.

    Raises:
        BenchFailed: the process failed, timed out, or wrote no result (its output tail
            is in the message).
    """
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, *argv]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchFailed(f"{' '.join(argv)} ran past {timeout_s:.0f} s") from exc
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result_path.is_file():
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise BenchFailed(f"{' '.join(argv)} exited {proc.returncode}; output tail:\n{tail}")
    out = json.loads(result_path.read_text())
    out["process_wall_s"] = wall
    return out


def median(values: Sequence[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else math.nan


@dataclass
class TrainProbe:
    """Times and counts a `transformers.Trainer` loop without changing it.

    `install()` wraps `Trainer.training_step` (called for every micro-batch by the Trainer and
    by TRL's SFTTrainer, which calls it through `super()`) to count supervised tokens (labels
    not -100 after the one-token shift) and processed tokens, record the loss, and keep the
    model; and registers a global optimizer-step hook that stamps the end of every step.

    Throughput is taken from the end of step 1 to the end of the last step, so model loading,
    data preparation, the first (warm-up) step, the held-out evaluation and saving are outside
    it. `on_tokens` is called once, at the end of the first step whose cumulative supervised
    tokens reach `eval_at_tokens`; the time it takes is taken out of the window.
    """

    eval_at_tokens: int
    on_tokens: Callable[[Any], float]
    step_sup: list[int] = field(default_factory=list)  # supervised tokens per optimizer step
    step_proc: list[int] = field(default_factory=list)  # tokens in the batch (padding incl.)
    step_real: list[int] = field(default_factory=list)  # tokens in the batch, padding excl.
    step_loss: list[float] = field(default_factory=list)
    step_end: list[float] = field(default_factory=list)  # perf_counter at each step's end
    paused_s: list[float] = field(default_factory=list)  # time spent in this probe per step
    model: Any = None
    eval_loss: float | None = None
    eval_step: int | None = None
    eval_tokens: int | None = None
    _sup: int = 0
    _proc: int = 0
    _real: int = 0
    _loss: list[float] = field(default_factory=list)

    def install(self) -> None:
        """Wrap `Trainer.training_step` and hook every optimizer's `step`."""
        import torch.optim.optimizer as optim_mod
        from transformers import Trainer

        inner = Trainer.training_step
        probe = self

        def training_step(trainer: Any, model: Any, inputs: dict[str, Any], *a: Any, **kw: Any):
            probe._count(model, inputs)
            loss = inner(trainer, model, inputs, *a, **kw)
            probe._loss.append(float(loss.detach().float().item()))
            return loss

        Trainer.training_step = training_step  # type: ignore[method-assign]
        optim_mod.register_optimizer_step_post_hook(self._on_step)

    def _count(self, model: Any, inputs: dict[str, Any]) -> None:
        labels = inputs.get("labels")
        if labels is None:
            raise BenchFailed("the training batch has no `labels`: cannot count supervised tokens")
        self.model = model
        self._sup += int((labels[..., 1:] != IGNORE_INDEX).sum())
        ids = inputs["input_ids"]
        self._proc += ids.numel()
        mask = inputs.get("attention_mask")
        self._real += int(mask.sum()) if mask is not None else ids.numel()

    def _on_step(self, *_: Any) -> None:
        t0 = time.perf_counter()
        self.step_end.append(t0)
        self.step_sup.append(self._sup)
        self.step_proc.append(self._proc)
        self.step_real.append(self._real)
        self.step_loss.append(statistics.fmean(self._loss) if self._loss else math.nan)
        self._sup = self._proc = self._real = 0
        self._loss = []
        if self.eval_loss is None and sum(self.step_sup) >= self.eval_at_tokens:
            self.eval_loss = self.on_tokens(self.model)
            self.eval_step, self.eval_tokens = len(self.step_end), sum(self.step_sup)
        self.paused_s.append(time.perf_counter() - t0)

    def summary(self) -> dict[str, Any]:
        """Per-step series and the throughput window (steps 2..N); needs at least 2 steps."""
        n = len(self.step_end)
        if n < 2:
            raise BenchFailed(f"only {n} optimizer step(s) seen: run at least 2 steps")
        # steps 2..N: from the end of step 1 (after its probe work) to the end of step N
        window = self.step_end[-1] - self.step_end[0] - sum(self.paused_s[:-1])
        sup, proc, real = sum(self.step_sup[1:]), sum(self.step_proc[1:]), sum(self.step_real[1:])
        return {
            "steps": n,
            "window_s": window,
            "supervised_tokens_window": sup,
            "supervised_tok_s": sup / window,
            "processed_tok_s": proc / window,
            "real_tok_s": real / window,
            "supervised_tokens_total": sum(self.step_sup),
            "step_supervised_tokens": self.step_sup,
            "step_processed_tokens": self.step_proc,
            "step_loss": self.step_loss,
        }


def busy_cores(interval_s: float = 2.0) -> float:
    """Cores' worth of CPU time the whole machine spent busy over the next `interval_s`
    seconds (0 .. cpu count). Called before a harness starts its own work, it measures what
    else runs. The 1-minute load average would also count the work of the harness that ran
    just before (a `make bench` step), for a minute after it ended."""
    import psutil

    return psutil.cpu_percent(interval=interval_s) / 100 * (os.cpu_count() or 1)


def check_host(what: str, share: float = 0.5) -> dict[str, Any]:
    """Warn (stderr) when other processes keep more than `share` of the cores busy; return
    the figures to record with the results (`busy_cores_start`, `load_average_start`)."""
    busy, cores = busy_cores(), os.cpu_count() or 1
    if busy > share * cores:
        print(
            f"WARNING: other processes kept {busy:.1f} of {cores} cores busy before {what}: "
            "they share the CPU, so these timings are not results (oversubscribed OpenMP "
            "threads slow a step by 10x or more)",
            file=sys.stderr,
            flush=True,
        )
    return {"busy_cores_start": round(busy, 2), "load_average_start": os.getloadavg()}


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def greedy_tie(
    model: Any, prompt: Sequence[int], shared: Sequence[int], ref_token: int, my_token: int
) -> dict[str, Any] | None:
    """Whether two greedy answers to `prompt` that part after `shared` tokens part at a tie:
    `model` (in the dtype that decoded them), fed `prompt` and `shared`, must rank both next
    tokens at the top within 2 units in the last place of its dtype (in bf16, logits carry
    8 bits: two candidates often round to the same value, and kernels that sum in another
    order break such a tie differently). Returns the logits it saw, or None when it is no tie.
    """
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[*prompt, *shared]])).logits[0, -1].float()
    top = float(logits.max())
    eps = torch.finfo(next(model.parameters()).dtype).eps
    ulp = eps * 2 ** math.floor(math.log2(abs(top))) if top else eps
    a, b = float(logits[ref_token]), float(logits[my_token])
    if top - min(a, b) > 2 * ulp:
        return None
    return {"position": len(shared), "logits": [a, b], "top": top, "tolerance": 2 * ulp}
