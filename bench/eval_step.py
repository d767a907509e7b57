"""The evaluate step, the old padded way against the fast paths, beside the finetune step.

On the seed notebook's settings (SmolLM2-135M-Instruct imported offline, chitchat at
`--split-pc 2`, 3 epochs, `max_seq_length` -1, the card's model_specific_defaults), in a
scratch workspace:

1. `chattune model import`, `chattune data download`, then one job of the pipeline
   (`chattune job create ... --stream`); the job records each step's time, the finetune
   step's among them, and its evaluate step already runs the fast paths.
2. The evaluate step on that job's model and test split, twice, each in its own process:
   `old` is train/evaluate.py of commit 7a93d4f (padded perplexity batches, fp32 logits at
   every position, `model.generate` on left-padded batches), loaded from git; `new` is
   `chattune.evaluate.step`. Each child reports the step's wall time, its peak RSS and
   the metrics.

Writes `bench/results/eval-step-<stamp>.json`. The target: evaluate at most a quarter of the
finetune step's time, and a lower peak RSS than the old way.

    PYTHONPATH=$PWD/src .venv/bin/python bench/eval_step.py [--workdir /tmp/eval-bench]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, machine_record, peak_rss_mb, run_child, versions

OLD_COMMIT = "7a93d4f"
OLD_PATH = "src/chattune/train/evaluate.py"
MODEL = "SmolLM2-135M-Instruct"
SEED_SETTINGS = {  # the seed notebook's, plus its max_seq_length default
    "num_train_epochs": "3",
    "per_device_train_batch_size": "1",
    "per_device_eval_batch_size": "1",
    "learning_rate": "5e-6",
    "lr_scheduler_type": "cosine",
    "apply_lora": "true",
    "apply_deepspeed": "true",
    "deepspeed_stage": "2",
    "max_seq_length": "-1",
}


def _chattune(env: dict[str, str], *args: str) -> None:
    cmd = [sys.executable, "-m", "chattune", *args]
    print("$ chattune " + " ".join(args), flush=True)
    subprocess.run(cmd, env=env, check=True)


def _env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "CHATTUNE_HOME": str(workdir / "workspace")}


def show_job(workdir: Path, name: str) -> dict[str, Any]:
    """The record of job `name` in `workdir`'s workspace, as a dict."""
    out = subprocess.run([sys.executable, "-m", "chattune", "job", "show", name, "--json"],
                         env=_env(workdir), check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout)


def run_job(workdir: Path, name: str) -> dict[str, Any]:
    """Import, download and run the pipeline in `workdir`; the job's record as a dict."""
    env = _env(workdir)
    data = workdir / "chitchat"
    _chattune(env, "model", "import", MODEL)
    _chattune(env, "data", "download", "--dataset", "chitchat", "--download-dir", str(data),
              "--split-pc", "2")  # fmt: skip
    sets = [x for k, v in SEED_SETTINGS.items() for x in ("--set", f"{k}={v}")]
    _chattune(env, "job", "create", "--model", MODEL, "--name", name, "--train-file",
              str(data / "train_sft.jsonl"), "--test-file", str(data / "test_sft.jsonl"),
              *sets, "--stream", "--force-rerun")  # fmt: skip
    return show_job(workdir, name)


def evaluate_config(job: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """The EvaluateConfig fields the pipeline gives the evaluate step of `job`."""
    steps = job["steps"]
    finetune, preprocess = steps["finetune"]["state"], steps["preprocess"]["state"]
    params = job["spec"]["parameters"]
    model = Path(finetune["finetune_dir"]) / "model"
    lora = (model / "adapter_config.json").is_file()
    data = Path(preprocess["preprocess_dir"])
    max_new = int(params.get("eval_max_new_tokens", 64))
    return {
        "model_dir": str(steps["model_import"]["state"]["model_dir"] if lora else model),
        "adapter_dir": str(model) if lora else None,
        "test_tokenized": str(data / "test.parquet"),
        "test_messages": str(data / "test_messages.jsonl"),
        "sample_size": int(params.get("eval_sample_size", 50)),
        "max_new_tokens": max_new,
        "max_prompt_tokens": max(int(preprocess["max_seq_length"]) - max_new, 16),
        "batch_size": max(int(params.get("per_device_eval_batch_size", 1)), 8),
        "precision": str(params.get("precision", "32")),
        "output_dir": str(output_dir),
        "seed": int(params.get("seed", 42)),
    }


def _old_module(path: Path) -> Any:
    """train/evaluate.py of `OLD_COMMIT`, its moved imports pointed at their new places."""
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:{OLD_PATH}"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    moved = {
        "chattune.train.metrics": "chattune.evaluate.metrics",
        "chattune.compute.machine": "chattune.host.machine",
    }
    for old, new in moved.items():
        src = src.replace(old, new)
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_evaluate", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["old_evaluate"] = module  # pydantic resolves the config's annotations there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def child(way: str, cfg_file: Path, result: Path) -> None:
    """Run the evaluate step one way; write its time, peak RSS and metrics to `result`."""
    if way == "old":
        module = _old_module(result.with_name("old_evaluate.py"))
    else:
        from chattune.evaluate import step as module
    cfg = module.EvaluateConfig(**json.loads(cfg_file.read_text()))
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()

    def log(message: str) -> None:
        lines.append((time.perf_counter() - t0, message))
        print(f"{lines[-1][0]:.1f}s {message}", flush=True)  # progress, should the run be cut

    metrics = module.run_evaluate(cfg, log)
    wall = time.perf_counter() - t0
    perplexity_s = next((t for t, m in lines if m.startswith("eval_loss")), None)
    result.write_text(json.dumps({
        "way": way, "wall_s": wall, "perplexity_s": perplexity_s, "peak_rss_mb": peak_rss_mb(),
        "metrics": metrics, "log": [f"{t:.1f}s {m}" for t, m in lines],
    }, indent=2))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/chattune-eval-bench"))
    ap.add_argument("--job", help="reuse this completed job of the workdir's workspace")
    ap.add_argument(
        "--reuse", action="store_true", help="keep a way's result already in workdir (same job)"
    )
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per evaluate run")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="an earlier result file whose old-way run stands in for this one's (the old way "
        "takes 7-8 minutes; the ratio to the finetune step is this run's either way)",
    )
    ap.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.config, a.result)
        return 0

    a.workdir.mkdir(parents=True, exist_ok=True)
    load = {"start": os.getloadavg()}
    if a.job:
        job = show_job(a.workdir, a.job)
    else:
        job = run_job(a.workdir, f"eval-bench-{time.strftime('%Y%m%dT%H%M%S')}")
    if job["status"] != "Completed":
        raise SystemExit(f"job {job['name']} ended {job['status']}: {job.get('error')}")
    runs = {}
    if a.baseline:
        runs["old"] = json.loads(a.baseline.read_text())["evaluate"]["old"]
        print(f"evaluate, the old way: from {a.baseline}")
    for way in [w for w in ("old", "new") if w not in runs]:
        cfg_file = a.workdir / f"evaluate-{way}.json"
        cfg_file.write_text(json.dumps(evaluate_config(job, a.workdir / f"evaluate-{way}")))
        result = a.workdir / f"result-{way}.json"
        if (
            a.reuse
            and result.is_file()
            and json.loads(result.read_text()).get("job") == job["name"]
        ):
            runs[way] = json.loads(result.read_text())
            print(f"evaluate, the {way} way: kept {result}")
            continue
        print(f"evaluate, the {way} way ...", flush=True)
        argv_child = [__file__, "--child", way, "--config", str(cfg_file), "--result", str(result)]
        runs[way] = run_child(argv_child, result, a.timeout)
        result.write_text(json.dumps({**runs[way], "job": job["name"]}, indent=2))
        load[f"after_{way}"] = os.getloadavg()
        print(f"  {runs[way]['wall_s']:.1f} s, peak RSS {runs[way]['peak_rss_mb']:.0f} MiB")

    finetune_s = job["steps"]["finetune"]["duration_s"]
    new, old = runs["new"], runs["old"]
    report = {
        "bench": "eval_step",
        "job": job["name"],
        "settings": {**SEED_SETTINGS, "model": MODEL, "dataset": "chitchat --split-pc 2"},
        "steps_s": {k: v.get("duration_s") for k, v in job["steps"].items()},
        "finetune_s": finetune_s,
        "evaluate": runs,
        "old_way_from": str(a.baseline) if a.baseline else None,
        "ratio_new_to_finetune": new["wall_s"] / finetune_s,
        "speedup_new_vs_old": old["wall_s"] / new["wall_s"],
        "target_met": new["wall_s"] <= finetune_s / 4 and new["peak_rss_mb"] < old["peak_rss_mb"],
        "metric_rel_diff": {
            k: abs(new["metrics"][k] - v) / max(abs(v), 1e-12) for k, v in old["metrics"].items()
        },
        "note": "a shared machine: other processes ran beside the benchmark; times are noisy",
        "load_average_1_5_15": load,
        "machine": machine_record(),
        "versions": versions(),
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"eval-step-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("finetune_s", "ratio_new_to_finetune",
                                              "speedup_new_vs_old", "target_met")}))  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
