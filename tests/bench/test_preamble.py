"""The preamble every harness shares (bench/common.py): its flags, the run's stamp, the
result file with the machine and versions."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.bench.conftest import load_bench

common = load_bench("common")

# Each harness and the shared flags it takes (SHARED_FLAGS' names).
HARNESSES = {
    "attention_kernels": ("results_dir",),
    "linear_kernels": ("model_dir", "results_dir"),
    "malloc_tuning": ("repeats", "model_dir", "data_dir", "work_dir", "results_dir"),
    "profile_decode": ("repeats", "model_dir", "data_dir"),
    "t1_batching": ("model_dir", "work_dir", "results_dir"),
    "t1_fastpaths": ("model_dir", "data_dir", "work_dir", "results_dir"),
    "t1_training": ("repeats", "model_dir", "data_dir", "work_dir", "results_dir"),
    "t2_serving": ("repeats", "model_dir", "data_dir", "work_dir", "results_dir"),
    "t3_data": ("repeats", "model_dir", "work_dir", "results_dir"),
}


def test_parser_adds_the_shared_flags_with_their_defaults() -> None:
    ap = common.parser("Title line.\n\nMore text.", "repeats", "data_dir", "results_dir")
    assert ap.description == "Title line."
    a = ap.parse_args([])
    assert (a.repeats, a.data_dir, a.results_dir) == (3, common.DATA_DIR, common.RESULTS_DIR)
    a = ap.parse_args(["--repeats", "1", "--results-dir", "/x"])
    assert (a.repeats, a.results_dir) == (1, Path("/x"))
    assert not hasattr(a, "work_dir")  # only the flags asked for


def test_parser_refuses_an_unknown_shared_flag() -> None:
    with pytest.raises(KeyError, match="out_dir"):
        common.parser("doc", "out_dir")


def test_utc_stamp_names_files_by_utc_second() -> None:
    assert common.utc_stamp(datetime(2026, 12, 4, 20, 43, 30, tzinfo=UTC)) == "20261204T204330Z"
    assert re.fullmatch(r"\d{8}T\d{6}Z", common.utc_stamp())


def test_write_result_records_the_machine_and_versions(tmp_path: Path) -> None:
    path = common.write_result(tmp_path / "results", "t9", "20261204T204330Z", {"x": 1}, ["pip"])
    assert path == tmp_path / "results" / "t9-20261204T204330Z.json"
    data = json.loads(path.read_text())
    assert data["x"] == 1
    assert {"cpu_model", "cpu_bf16_supported", "torch_threads"} <= set(data["machine"])
    assert {"python", "torch", "pip"} <= set(data["versions"])


@pytest.mark.parametrize(("name", "shared"), sorted(HARNESSES.items()))
def test_every_harness_starts_from_the_shared_parser(
    name: str, shared: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        load_bench(name).main(["--help"])
    assert exit_.value.code == 0
    usage = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal
    for flag in shared:
        option, kwargs = common.SHARED_FLAGS[flag]
        assert f"{option} {option.lstrip('-').upper().replace('-', '_')} {kwargs['help']}" in usage
