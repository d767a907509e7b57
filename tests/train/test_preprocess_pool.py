"""Preprocess in worker processes (`workers` >= 2) writes exactly what it writes in one process:
the same bytes, the same drops with the same lines, the same errors; a dead worker fails
clearly instead of hanging; small inputs stay in this process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from chattune.train import preprocess
from chattune.train.chat_encoder import ChatEncoder, TemplateRenderError
from chattune.train.preprocess import ChatTemplateFailed, PreprocessConfig, run_preprocess
from chattune.train.preprocess_pool import EncodedChunk, EncoderPool, WorkerFailed, plain

from .test_preprocess import BOOM, Logs, boom_model, conv, write_jsonl


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 8 conversations, so that a small file is many batches across workers."""
    monkeypatch.setattr(preprocess, "_CHUNK", 8)


def long_conv(i: int) -> list[dict[str, str]]:
    """A conversation whose only reply starts past 160 tokens (dropped at max_seq_length 160)."""
    q = " ".join(f"word{i}x{k}" for k in range(60))
    return [{"role": "user", "content": q}, {"role": "assistant", "content": f"ok {i}"}]


def kind(i: int) -> str:
    """What row i of `mixed_rows` is."""
    if i % 13 == 5:
        return "invalid_json"
    if i % 11 == 3:
        return "not_alternating"
    if i % 9 == 4:
        return "truncated_no_assistant"
    return "good"


def mixed_rows() -> list[Any]:
    """Good rows (long ones cut to the limit), schema drops and truncation drops."""
    u, a = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    rows = {
        "invalid_json": lambda i: '{"messages": [',
        "not_alternating": lambda i: [u, a, a],
        "truncated_no_assistant": long_conv,  # no assistant token in the first 160
        "good": lambda i: conv(i, turns=1 + i % 4, system=i % 2 == 0),
    }
    return [rows[kind(i)](i) for i in range(60)]


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output file; report.json without its wall time."""
    got = {}
    for p in sorted(out.iterdir()):
        data = p.read_bytes()
        if p.name == "report.json":
            report = json.loads(data)
            report.pop("seconds")
            data = json.dumps(report, sort_keys=True).encode()
        got[p.name] = hashlib.sha256(data).hexdigest()
    return got


def run(tmp_path: Path, model_dir: Path, name: str, workers: int, **files: Path) -> Logs:
    logs = Logs()
    cfg = PreprocessConfig(
        model_dir=model_dir,
        max_seq_length=160,
        output_dir=tmp_path / name,
        workers=workers,
        pool_min_rows=0,
        **files,
    )
    run_preprocess(cfg, logs)
    return logs


@pytest.mark.parametrize("model", ["tiny_llama_dir", "tiny_phi3_dir"])
def test_workers_write_the_same_bytes_drops_and_lines(
    tmp_path: Path, model: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(model)
    train = write_jsonl(tmp_path / "train.jsonl", mixed_rows())
    test = write_jsonl(tmp_path / "test.jsonl", [conv(i, turns=2) for i in range(10)])
    one = run(tmp_path, model_dir, "one", 1, train_file=train, test_file=test)
    two = run(tmp_path, model_dir, "two", 2, train_file=train, test_file=test)

    assert "encoding in this process" in one.text
    assert "encoding in 2 worker processes" in two.text
    assert digests(tmp_path / "one") == digests(tmp_path / "two")
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    lines = {k: [i + 1 for i in range(60) if kind(i) == k] for k in ("invalid_json",)}
    lines["not_alternating"] = [i + 1 for i in range(60) if kind(i) == "not_alternating"]
    lines["truncated_no_assistant"] = [
        i + 1 for i in range(60) if kind(i) == "truncated_no_assistant"
    ]
    dropped = report["dropped"]
    assert {k: v["count"] for k, v in dropped.items()} == {k: len(v) for k, v in lines.items()}
    assert {k: [e["line"] for e in v["examples"]] for k, v in dropped.items()} == {
        k: v[:5] for k, v in lines.items()
    }
    assert all(len(v) > 2 for v in lines.values())
    assert report["splits"]["train"]["truncated"] > 0
    assert report["splits"]["test"]["rows_out"] == 10
    # the log is the same too, but for how the work ran and how long it took
    same = [s for s in one if "encoding in" not in s and not s.startswith("wrote ")]
    assert same == [s for s in two if "encoding in" not in s and not s.startswith("wrote ")]


def test_a_bad_row_in_a_worker_gives_the_same_error(tmp_path: Path, tiny_llama_dir: Path) -> None:
    model_dir = boom_model(tmp_path, tiny_llama_dir)
    rows: list[Any] = [conv(i) for i in range(40)]
    rows[29] = BOOM  # in the fourth batch of 8: a worker's
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    errors = {}
    for workers in (1, 2):
        with pytest.raises(ChatTemplateFailed) as err:
            run(tmp_path, model_dir, f"out{workers}", workers, train_file=train)
        errors[workers] = (err.value.message, err.value.fix)
        assert not list((tmp_path / f"out{workers}").glob("*.parquet"))
        assert not (tmp_path / f"out{workers}" / "report.json").exists()
    assert errors[1] == errors[2]
    assert f"{train}, line 30: TemplateError: no boom allowed" in errors[2][0]
    assert '"content": "boom"' in errors[2][0]


def test_a_template_error_crosses_processes_by_name_and_text() -> None:
    import pickle

    err = TemplateRenderError(3, KeyError("role"), payload=object())
    back = pickle.loads(pickle.dumps(err))
    assert (back.index, str(back), back.payload) == (3, "KeyError: 'role'", None)
    assert str(pickle.loads(pickle.dumps(back))) == "KeyError: 'role'"


def test_a_killed_worker_fails_clearly(tiny_llama_dir: Path) -> None:
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tiny_llama_dir))
    batches = [(k, [conv(k * 8 + i) for i in range(8)]) for k in range(50)]
    got: list[BaseException] = []

    def consume(pool: EncoderPool) -> None:
        try:
            for _ in pool.map(batches, 64):
                pass
        except BaseException as exc:
            got.append(exc)

    with EncoderPool(encoder, 2).start() as pool:
        pids = pool.wait_started()
        assert len(pids) == 2 and os.getpid() not in pids
        os.kill(pids[0], signal.SIGKILL)
        t = threading.Thread(target=consume, args=(pool,), daemon=True)
        t.start()
        t.join(timeout=60)
        assert not t.is_alive(), "a dead worker must not hang the step"
    assert len(got) == 1 and isinstance(got[0], WorkerFailed), got
    assert "killed" in got[0].message and "workers" in got[0].fix


def test_pool_results_match_in_process_encoding(tiny_phi3_dir: Path) -> None:
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tiny_phi3_dir))
    convs = [conv(i, turns=1 + i % 3, system=i % 2 == 1) for i in range(20)]
    here = EncodedChunk.pack(encoder.encode([plain(c) for c in convs], 24), 24)
    with EncoderPool(encoder, 2).start() as pool:
        [(_, there)] = list(pool.map([(None, convs)], 24))
    for field in ("ids", "labels", "offsets", "tokens", "first_label", "label_tokens"):
        assert getattr(here, field).tolist() == getattr(there, field).tolist(), field
    assert here.rows() == there.rows() == 20


def test_small_inputs_stay_in_this_process(tmp_path: Path, tiny_llama_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(30)])
    logs = Logs()
    cfg = PreprocessConfig(
        train_file=train, model_dir=tiny_llama_dir, output_dir=tmp_path / "out", workers=2
    )
    assert cfg.pool_min_rows > 30
    run_preprocess(cfg, logs)
    assert "encoding in this process" in logs.text


def test_workers_setting(tmp_path: Path) -> None:
    base = {"train_file": tmp_path / "t.jsonl", "model_dir": tmp_path, "output_dir": tmp_path}
    assert PreprocessConfig(**base).workers == "auto"
    cpus = len(os.sched_getaffinity(0))
    auto = PreprocessConfig(**base).worker_count()
    assert auto == (cpus if cpus >= preprocess.AUTO_MIN_CPUS else 1)
    assert PreprocessConfig(**base, workers=3).worker_count() == 3
    for bad in (0, -1, "many"):
        with pytest.raises(ValueError, match="workers"):
            PreprocessConfig(**base, workers=bad)


def test_the_cache_key_ignores_how_the_work_runs(tmp_path: Path, tiny_llama_dir: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [conv(i) for i in range(12)])
    base = {"train_file": train, "model_dir": tiny_llama_dir, "output_dir": tmp_path}
    keys = {
        preprocess.preprocess_cache_key(PreprocessConfig(**base, workers=w, pool_min_rows=m))
        for w, m in ((1, 0), (2, 0), ("auto", 4096))
    }
    assert len(keys) == 1


def test_workers_started_after_the_check_write_the_same(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """A .json file gives no line count up front: the pool starts after the rows are checked."""
    train = write_jsonl(tmp_path / "train.json", mixed_rows())
    one = run(tmp_path, tiny_llama_dir, "one", 1, train_file=train)
    two = run(tmp_path, tiny_llama_dir, "two", 2, train_file=train)
    assert "encoding in 2 worker processes" in two.text and "this process" in one.text
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_too_few_valid_rows_close_an_early_pool(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """60 lines start the workers early; 49 valid rows, under pool_min_rows 55, do not use them."""
    train = write_jsonl(tmp_path / "train.jsonl", mixed_rows())
    logs = Logs()
    cfg = PreprocessConfig(
        train_file=train,
        model_dir=tiny_llama_dir,
        max_seq_length=160,
        output_dir=tmp_path / "out",
        workers=2,
        pool_min_rows=55,
    )
    report = run_preprocess(cfg, logs)
    assert "encoding in this process" in logs.text
    valid = sum(kind(i) in ("good", "truncated_no_assistant") for i in range(60))
    assert valid < 55
    assert sum(report.splits[s].rows_in for s in ("train", "validation", "test")) == valid
