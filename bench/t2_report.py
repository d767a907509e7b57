"""What T2 makes of its runs: medians and ratios, the correctness comparison of the answers,
the issue's targets, the markdown table and the sweep plot."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import common_prefix, median

METRICS = (
    "output_tok_s",
    "usage_output_tok_s",
    "requests_s",
    "latency_p50_s",
    "latency_p95_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "mean_output_tokens",
    "wall_s",
)
BASELINES = ("transformers_serve", "mlflow_serve")


def _level(run: dict[str, Any], c: int) -> dict[str, Any] | None:
    return next((lv for lv in run["levels"] if lv["concurrency"] == c), None)


def summarize_runs(runs: list[dict], names: list[str], concurrencies: list[int]) -> dict:
    """Per contender and concurrency: the median of every metric over the repeats, and the
    median over repeats of the ratios to each baseline measured in the same repeat
    (output tokens/s: mine / theirs; p95 latency: mine / theirs, lower is better)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        out[name] = {}
        for c in concurrencies:
            mine = [
                (r["repeat"], lv)
                for r in runs
                if r["contender"] == name
                if (lv := _level(r, c)) is not None
            ]
            if not mine:
                continue
            row: dict[str, Any] = {
                m: median([lv[m] for _, lv in mine if lv.get(m) is not None]) for m in METRICS
            }
            row["requests"] = mine[0][1]["requests"]
            row["repeats_ok"] = len(mine)
            for base in BASELINES:
                if base == name:
                    continue
                tok, p95 = [], []
                for rep, lv in mine:
                    theirs = [
                        _level(r, c) for r in runs if r["contender"] == base and r["repeat"] == rep
                    ]
                    if theirs and theirs[0] is not None:
                        tok.append(lv["output_tok_s"] / theirs[0]["output_tok_s"])
                        p95.append(lv["latency_p95_s"] / theirs[0]["latency_p95_s"])
                row[f"tok_s_ratio_vs_{base}"] = median(tok)
                row[f"p95_ratio_vs_{base}"] = median(p95)
            out[name][str(c)] = row
    return out


def agreement(
    runs: list[dict],
    names: list[str],
    agree_tokens: int,
    count: Callable,
    tokenizer: Any,
    tie: Callable[[list[int], int, int], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Compare the greedy answers across contenders.

    Hard checks (listed in `problems`): every contender gives the same probe answer in every
    repeat (greedy is deterministic), or answers that part at a tie only, and its probe
    answer matches the first contender's:
    the same text, or at least the first `agree_tokens` tokens the same, or the two part at
    a tie. `tie(shared_ids, ref_token, my_token)` answers that: the model, fed the probe and
    the answer's first shared tokens, puts both next tokens at the top within rounding (in
    bf16, logits carry 8 bits: two candidates often round to the same value, and servers
    break such a tie differently); it returns the logits it saw, or None when it is no tie.
    Informational: for every load request of repeat 1, the share of answers identical to the
    first contender's at the same concurrency, and the tokens they share.
    """

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def at_tie(a: list[int], b: list[int]) -> tuple[int, dict[str, Any] | None]:
        """Tokens `a` and `b` share, and the tie judge's verdict where they part."""
        shared = common_prefix(a, b)
        if tie is None or a == b or shared >= min(len(a), len(b)):
            return shared, None
        return shared, tie(a[:shared], a[shared], b[shared])

    problems: list[str] = []
    probes = {n: [r["probe_text"] for r in runs if r["contender"] == n] for n in names}
    probes = {n: p for n, p in probes.items() if p}
    repeat_ties: dict[str, list[dict[str, Any]]] = {}
    for n, texts in probes.items():
        # a sampler that keeps every token tied at the top (mlflow serve's `top_k: 1`) picks
        # among them at random: such answers may part between repeats, at a tie only
        verdicts = [at_tie(ids(texts[0]), ids(t)) for t in texts[1:] if t != texts[0]]
        if any(v is None for _, v in verdicts):
            problems.append(f"{n}: the probe answer changed between repeats (greedy): {texts!r}")
        elif verdicts:
            repeat_ties[n] = [{"shared_tokens": k, "tie": v} for k, v in verdicts]
    ref_name = next(iter(probes), None)
    compare: dict[str, Any] = {}
    if ref_name is not None:
        ref = ids(probes[ref_name][0])
        for n, texts in probes.items():
            mine = ids(texts[0])
            same = texts[0] == probes[ref_name][0]
            shared, parted = at_tie(ref, mine)
            compare[n] = {"identical": same, "shared_tokens": shared, "tokens": len(mine)}
            if n in repeat_ties:
                compare[n]["repeats_parted_at_ties"] = repeat_ties[n]
            if parted is not None:
                compare[n]["parted_at_tie"] = parted
            elif not same and shared < agree_tokens:
                problems.append(
                    f"{n}: its greedy probe answer shares only {shared} tokens with "
                    f"{ref_name}'s (need {agree_tokens} or the same text): {texts[0]!r} vs "
                    f"{probes[ref_name][0]!r}"
                )
    load: dict[str, Any] = {}
    first = [r for r in runs if r["repeat"] == 0]
    ref_run = next((r for r in first if r["contender"] == ref_name), None)
    for r in first:
        if ref_run is None or r is ref_run:
            continue
        for lv in r["levels"]:
            ref_lv = _level(ref_run, lv["concurrency"])
            if ref_lv is None:
                continue
            ref_text = {x["idx"]: x["text"] for x in ref_lv["records"]}
            pairs = [(x["text"], ref_text[x["idx"]]) for x in lv["records"] if x["idx"] in ref_text]
            shared = [common_prefix(ids(a), ids(b)) for a, b in pairs]
            load.setdefault(r["contender"], {})[str(lv["concurrency"])] = {
                "compared": len(pairs),
                "identical_share": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
                "shared_tokens_min": min(shared) if shared else None,
                "shared_tokens_median": statistics.median(shared) if shared else None,
            }
    words = [
        f"{n} identical"
        if v["identical"]
        else f"{n} {v['shared_tokens']}/{v['tokens']} tokens"
        + (" (then a tie)" if "parted_at_tie" in v else "")
        for n, v in compare.items()
        if n != ref_name
    ]
    return {
        "reference": ref_name,
        "probe": compare,
        "probe_texts": {n: t[0] for n, t in probes.items()},
        "load_vs_reference": load,
        "summary": (f"vs {ref_name}: " + ", ".join(words)) if words else "one contender: none",
        "problems": problems,
    }


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's T2 targets for chattune: at concurrency 16 >= 2x transformers serve and
    >= 10x mlflow serve in output tokens/s with p95 latency no worse; at concurrency 1 no
    slower than either. Missing contenders or levels are left out."""
    mine = summary.get("chattune", {})
    checks: dict[str, Any] = {}
    for c, base, need in (
        ("16", "transformers_serve", 2.0),
        ("16", "mlflow_serve", 10.0),
        ("1", "transformers_serve", 1.0),
        ("1", "mlflow_serve", 1.0),
    ):
        row = mine.get(c)
        if not row or f"tok_s_ratio_vs_{base}" not in row:
            continue
        ratio = row[f"tok_s_ratio_vs_{base}"]
        checks[f"c{c} tok/s vs {base} >= {need:g}x"] = {"value": ratio, "met": ratio >= need}
        if c == "16":
            p95 = row[f"p95_ratio_vs_{base}"]
            checks[f"c{c} p95 vs {base} <= 1x"] = {"value": p95, "met": p95 <= 1.0}
    return checks


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def table(summary: dict[str, Any], names: list[str], concurrencies: list[int]) -> str:
    """The markdown table: one row per contender and concurrency (medians over repeats)."""
    head = (
        "| contender | conc | requests | out tok/s | req/s | p50 s | p95 s | TTFT p50 s "
        "| TTFT p95 s | x transformers serve | x mlflow serve | repeats |"
    )
    lines = [head, "|" + " --- |" * 12]
    for c in concurrencies:
        for n in names:
            r = summary.get(n, {}).get(str(c))
            if r is None:
                continue
            lines.append(
                f"| {n} | {c} | {r['requests']} | {_f(r['output_tok_s'])} | "
                f"{_f(r['requests_s'], 2)} | {_f(r['latency_p50_s'], 2)} | "
                f"{_f(r['latency_p95_s'], 2)} | {_f(r['ttft_p50_s'], 2)} | "
                f"{_f(r['ttft_p95_s'], 2)} | {_f(r.get('tok_s_ratio_vs_transformers_serve'), 2)} | "
                f"{_f(r.get('tok_s_ratio_vs_mlflow_serve'), 2)} | {r['repeats_ok']} |"
            )
    return "\n".join(lines)


def plot_sweep(
    summary: dict[str, Any], names: list[str], concurrencies: list[int], path: Path, title: str
) -> Path:
    """Output tokens/s and p95 latency against concurrency (medians), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for n in names:
        cs = [c for c in concurrencies if str(c) in summary.get(n, {})]
        ax1.plot(cs, [summary[n][str(c)]["output_tok_s"] for c in cs], "o-", label=n)
        ax2.plot(cs, [summary[n][str(c)]["latency_p95_s"] for c in cs], "o-", label=n)
    for ax, label in ((ax1, "output tokens/s"), (ax2, "p95 latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"T2 serving: {title}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
