"""T2 serving benchmark (issue 6): one chat model served three ways, under the same load.

  chattune            a chattune deployment behind its gateway (key auth), /v1/chat/completions
  transformers_serve  `transformers serve --continuous-batching`, /v1/chat/completions
  mlflow_serve        `mlflow models serve` of an MLflow transformers model (`llm/v1/chat`),
                      /invocations: the serving path of an Azure MLflow-model deployment

Load: chat requests cut from chitchat's test_gen (first user turns, cycled), at most
`--max-tokens` new tokens, greedy, at each concurrency of `--concurrency`, from a closed-loop
`httpx` async client. Measured per contender and concurrency: output tokens/s (answers
counted with the model's tokenizer), requests/s, p50/p95 latency, time to first token
(streaming where the server streams; mlflow serve does not: TTFT = latency).

Every server runs in its own process group, started on a free port and always stopped. Each
repeat starts each server once, checks its answer to one fixed greedy request against the
other servers' (same text, or the first `--agree-tokens` tokens the same), then runs every
concurrency. The order of the contenders (and of the concurrencies) reverses on every other
repeat; the table shows medians over repeats and ratios measured within a repeat.

    .venv/bin/python bench/t2_serving.py                           # defaults: ~12 min
    .venv/bin/python bench/t2_serving.py --requests 64 --repeats 3  # the issue's protocol
    .venv/bin/python bench/t2_serving.py --sweep                    # chattune, concurrency 1..32
    .venv/bin/python bench/t2_serving.py --requests 4 --concurrency 1,4 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    MODEL_NAME,
    BenchFailed,
    check_host,
    default_model_dir,
    greedy_tie,
    parser,
    utc_stamp,
    write_result,
)
from t2_load import build_requests, record_dicts, run_load, summarize
from t2_report import agreement, plot_sweep, summarize_runs, table, targets
from t2_servers import (
    bench_dtype,
    chattune_deployment,
    chattune_home,
    mlflow_model,
    mlflow_serve,
    transformers_serve,
)

CONTENDERS = ("chattune", "transformers_serve", "mlflow_serve")
EXTRA_VERSIONS = ("mlflow", "fastapi", "uvicorn", "httpx")
# Requests per concurrency when --requests is not given: enough for the default run to fit
# in about 12 minutes on an idle 2-core CPU (bench/README.md has the arithmetic).
DEFAULT_REQUESTS = {1: 4, 4: 8, 16: 16}
# mlflow serve does not batch (each request is its own `generate`), so its throughput does not
# grow with the number of requests: it gets fewer, never fewer than one per worker.
MLFLOW_DEFAULT_REQUESTS = {1: 2, 4: 4, 16: 16}


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from exc
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers >= 1, e.g. 1,4,16")
    return out


def requests_for(name: str, concurrency: int, given: int | None) -> int:
    """How many requests a contender gets at `concurrency`: `given` (--requests), else the
    default table, else 2 per worker (at least 8)."""
    if given is not None:
        return given
    table_ = MLFLOW_DEFAULT_REQUESTS if name == "mlflow_serve" else DEFAULT_REQUESTS
    return table_.get(concurrency, max(8, 2 * concurrency))


def _server_rss_mb(pids: list[int]) -> float | None:
    """Peak RSS (VmHWM) summed over the server processes and their children, in MiB."""
    try:
        import psutil
    except ImportError:
        return None
    seen, total = set(), 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                with contextlib.suppress(OSError, psutil.Error):
                    for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            total += int(line.split()[1]) / 1024
    return total or None


class Harness:
    """What every contender's run needs: model, requests, work folder, the cached MLflow copy
    and the chattune workspace (made once, on first use)."""

    def __init__(self, a: argparse.Namespace, model_dir: Path, work: Path) -> None:
        from transformers import AutoTokenizer

        self.a, self.model_dir, self.work = a, model_dir, work
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.most = max(a.concurrency)
        self.prepared: dict[str, Any] = {}
        longest = max(requests_for(n, c, a.requests) for n in CONTENDERS for c in a.concurrency)
        self.convs = build_requests(a.data_dir / "test_gen.jsonl", longest)
        self.probe = self.convs[0]

    def tie(self, shared: list[int], ref_token: int, my_token: int) -> dict[str, Any] | None:
        """Whether two greedy answers that part after `shared` tokens part at a tie (see
        `t2_report.agreement`): the model in the servers' dtype, fed the probe prompt and
        `shared`, must rank both next tokens at the top within 2 units in the last place of
        that dtype. Called once all servers are stopped (the model is loaded here, once)."""
        import torch
        from transformers import AutoModelForCausalLM

        if "tie_model" not in self.prepared:
            dtype = getattr(torch, bench_dtype())
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).eval()
            self.prepared["tie_model"] = model
        prompt = self.tokenizer.apply_chat_template(
            self.probe, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        return greedy_tie(self.prepared["tie_model"], prompt, shared, ref_token, my_token)

    def prompt_tokens(self) -> dict[str, float]:
        """Prompt lengths (chat template applied) of the requests, in tokens."""
        n = [
            len(self.tokenizer(t, add_special_tokens=False)["input_ids"])
            for t in (
                self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                for m in self.convs
            )
        ]
        return {
            "min": min(n),
            "median": statistics.median(n),
            "mean": statistics.fmean(n),
            "max": max(n),
        }

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def server(self, name: str) -> contextlib.AbstractContextManager:
        """The context manager that starts (and always stops) contender `name`."""
        if name == "chattune":
            if "home" not in self.prepared:
                self.prepared["home"] = chattune_home(self.model_dir, self.work)
            return chattune_deployment(self.prepared["home"], self.work, self.most)
        if name == "transformers_serve":
            return transformers_serve(self.model_dir, self.work, self.a.tf_cb_memory_percent)
        if "mlflow" not in self.prepared:
            path, took = mlflow_model(self.model_dir, self.a.work_dir.resolve() / "t2-cache")
            self.prepared["mlflow"] = path
            self.prepared["mlflow_save_s"] = took
        return mlflow_serve(self.prepared["mlflow"], self.work)

    def run_contender(self, name: str, rep: int, concurrencies: list[int]) -> dict[str, Any]:
        """Start `name`, check its probe answer, run every concurrency, stop it.

        Raises:
            BenchFailed: the server did not start, or a request failed or came back empty.
        """
        out: dict[str, Any] = {"contender": name, "repeat": rep, "levels": []}
        t0 = time.perf_counter()
        with self.server(name) as target:
            out["startup_s"], out["server"] = target.startup_s, target.settings
            probe, _ = run_load(target, [self.probe], 1, self.a.max_tokens)
            _raise_on_bad(name, "probe", probe)
            out["probe_text"] = probe[0].text
            for c in concurrencies:
                n = requests_for(name, c, self.a.requests)
                records, wall = run_load(target, self.convs[:n], c, self.a.max_tokens)
                stats = summarize(records, wall, self.count_tokens)
                level = {"concurrency": c, **stats}
                level["records"] = record_dicts(records)
                if rep > 0:  # texts once (repeat 1) are enough to compare; keep the timings
                    for r in level["records"]:
                        r.pop("text")
                out["levels"].append(level)
                _raise_on_bad(name, f"concurrency {c}", records)
                print(
                    f"  {name} c={c}: {stats['output_tok_s']:.1f} tok/s, "
                    f"{stats['requests_s']:.2f} req/s, p50 {stats['latency_p50_s']:.2f} s, "
                    f"p95 {stats['latency_p95_s']:.2f} s, ttft p50 {stats['ttft_p50_s']:.2f} s",
                    flush=True,
                )
            out["server_peak_rss_mb"] = _server_rss_mb(target.pids)
        out["wall_s"] = time.perf_counter() - t0  # start, probe, every level, stop
        return out


def _raise_on_bad(name: str, what: str, records: list) -> None:
    bad = [r for r in records if r.error or not r.text.strip()]
    if bad:
        first = bad[0]
        why = first.error or "empty answer"
        raise BenchFailed(
            f"{name} ({what}): {len(bad)} of {len(records)} requests failed or came back "
            f"empty; first (request {first.idx}): {why}"
        )


def _settings(a: argparse.Namespace, model_dir: Path, names: list[str]) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "model_dir": str(model_dir),
        "data": str(a.data_dir / "test_gen.jsonl"),
        "contenders": names,
        "concurrency": a.concurrency,
        "requests": {n: {c: requests_for(n, c, a.requests) for c in a.concurrency} for n in names},
        "repeats": a.repeats,
        "max_tokens": a.max_tokens,
        "greedy": "temperature 0 (OpenAI servers); top_k 1 (mlflow serve, see t2_load.py)",
        "agree_tokens": a.agree_tokens,
        "threads": "each server's default: torch's (one per core); chattune's supervisor "
        "gives its one instance every core",
        "transformers_serve_cb_max_memory_percent": a.tf_cb_memory_percent or "its default",
        "precision": f"{bench_dtype()} everywhere (chattune's default here, given to the others)",
        "output_tokens": "answers re-tokenized with the model's tokenizer (same rule for all)",
        "load": "closed loop: `concurrency` workers, each sends its next request when answered",
        "ttft": "first non-empty streamed text delta; mlflow serve does not stream: = latency",
    }


def main(argv: list[str] | None = None) -> int:
    """Run T2 (or the chattune concurrency sweep); write bench/results/t2-*.json; print a table."""
    ap = parser(__doc__, "repeats", "model_dir", "data_dir", "work_dir", "results_dir")
    ap.add_argument(
        "--requests",
        type=int,
        help="requests per concurrency and contender "
        f"(default: {DEFAULT_REQUESTS}, mlflow {MLFLOW_DEFAULT_REQUESTS})",
    )
    ap.add_argument("--concurrency", type=_ints, help="default 1,4,16 (sweep: 1,2,4,8,16,32)")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer (at most)")
    ap.add_argument(
        "--agree-tokens",
        type=int,
        default=32,
        help="tokens the probe answers of every contender must share",
    )
    ap.add_argument("--contenders", help=f"default {','.join(CONTENDERS)} (sweep: chattune)")
    ap.add_argument("--sweep", action="store_true", help="tokens/s against concurrency, PNG plot")
    ap.add_argument(
        "--tf-cb-memory-percent",
        type=float,
        help="transformers serve --cb-max-memory-percent (default: its own; on CPU it sizes "
        "the paged KV cache from free RAM)",
    )
    a = ap.parse_args(argv)
    a.concurrency = a.concurrency or ([1, 2, 4, 8, 16, 32] if a.sweep else [1, 4, 16])
    names = [
        n.strip()
        for n in (a.contenders or ("chattune" if a.sweep else ",".join(CONTENDERS))).split(",")
        if n.strip()
    ]
    if unknown := set(names) - set(CONTENDERS):
        ap.error(f"unknown contender(s) {sorted(unknown)}; known: {', '.join(CONTENDERS)}")
    if a.repeats < 1 or a.max_tokens < 1 or (a.requests is not None and a.requests < 1):
        ap.error("--repeats, --max-tokens and --requests must be >= 1")
    a.data_dir = a.data_dir.resolve()
    if not (a.data_dir / "test_gen.jsonl").is_file():
        ap.error(f"no test_gen.jsonl in {a.data_dir}: pass --data-dir (see bench/README.md)")

    model_dir = (a.model_dir or default_model_dir()).resolve()
    started = datetime.now(UTC)
    stamp = utc_stamp(started)
    kind = "t2-sweep" if a.sweep else "t2"
    work = a.work_dir.resolve() / f"{kind}-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"model {model_dir}\ndata {a.data_dir}\nwork {work}", flush=True)
    h = Harness(a, model_dir, work)
    host = check_host("T2")
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        for rep in range(a.repeats):
            flip = rep % 2 == 1
            for name in names[::-1] if flip else names:
                levels = a.concurrency[::-1] if flip else a.concurrency
                print(f"repeat {rep + 1}/{a.repeats}: {name} (concurrency {levels})", flush=True)
                try:
                    runs.append(h.run_contender(name, rep, levels))
                except BenchFailed as exc:
                    print(f"  FAILED: {exc}", flush=True)
                    problems.append(f"repeat {rep + 1}: {exc}")
    finally:
        # the workspace holds a copy of the checkpoint (hundreds of MB); kept after a failure
        # for its logs (endpoints/<name>/supervisor.log and the instance logs)
        if not problems and sys.exc_info()[0] is None:
            shutil.rmtree(work / "chattune_home", ignore_errors=True)
    summary = summarize_runs(runs, names, a.concurrency)
    agree = agreement(runs, names, a.agree_tokens, h.count_tokens, h.tokenizer, h.tie)
    problems += agree.pop("problems")
    result = {
        "benchmark": "T2 serving sweep" if a.sweep else "T2 serving",
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        **host,
        "load_average_end": os.getloadavg(),
        "settings": _settings(a, model_dir, names),
        "prompt_tokens": h.prompt_tokens(),
        "mlflow_save_s": h.prepared.get("mlflow_save_s"),
        "summary": summary,
        "correctness": agree,
        "targets": targets(summary) if not a.sweep else None,
        "runs": runs,
        "problems": problems,
    }
    out = write_result(a.results_dir, kind, stamp, result, EXTRA_VERSIONS)
    print(table(summary, names, a.concurrency))
    print(f"probe answers: {agree['summary']}")
    if a.sweep and runs:
        png = plot_sweep(
            summary,
            names,
            a.concurrency,
            a.results_dir / f"{kind}-{stamp}.png",
            f"{MODEL_NAME}, max {a.max_tokens} new tokens, {a.repeats} repeat(s)",
        )
        print(f"plot: {png}")
    print(f"results: {out}")
    if problems:
        print("FAILED checks:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
