"""The decode-linears harness: it times every linear layer of the model's config, checks the
packed variant against F.linear, and records the bounds it measures (timings not tested)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.bench.conftest import load_bench

TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 320,
}


@pytest.fixture(scope="module")
def lk() -> Any:
    return load_bench("linear_kernels")


def _model(tmp_path: Path, **cfg: Any) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**TINY, **cfg}))
    return d


def test_shapes_are_every_linear_a_decode_step_reads(lk: Any, tmp_path: Path) -> None:
    shapes = lk.model_shapes(_model(tmp_path))
    layer = [(64, 64), (32, 64), (32, 64), (64, 64), (96, 64), (96, 64), (64, 96)]
    assert shapes == layer * 2 + [(320, 64)]


def test_explicit_head_dim_is_used(lk: Any, tmp_path: Path) -> None:
    shapes = lk.model_shapes(_model(tmp_path, head_dim=32))
    assert shapes[:4] == [(128, 64), (64, 64), (64, 64), (64, 128)]


def test_run_records_both_variants_and_the_bounds(lk: Any, tmp_path: Path) -> None:
    rc = lk.main(
        ["--model-dir", str(_model(tmp_path)), "--rows", "1,3", "--repeats", "1",
         "--dtype", "float32", "--results-dir", str(tmp_path / "out")]
    )  # fmt: skip
    assert rc == 0
    (out,) = (tmp_path / "out").glob("linears-*.json")
    data = json.loads(out.read_text())
    shapes = lk.model_shapes(tmp_path / "model")
    assert data["linears"] == 15 and data["weights"] == sum(o * i for o, i in shapes)
    assert data["bytes"] == 4 * data["weights"] and data["read_gb_s"] > 0
    got = {(r["variant"], r["rows"]) for r in data["results"]}
    assert got == {("plain", 1), ("packed", 1), ("plain", 3), ("packed", 3)}
    for r in data["results"]:
        assert r["seconds"] > 0 and r["max_abs_diff"] <= 1e-3
        assert r["memory_bound_s"] == pytest.approx(data["bytes"] / data["read_gb_s"] / 1e9)
        flops = 2 * r["rows"] * data["weights"]
        assert r["compute_bound_s"] == pytest.approx(flops / data["matmul_peak_gflop_s"] / 1e9)
    if torch.backends.mkldnn.is_available():
        assert data["packed_layers"] == 15


def test_a_variant_that_disagrees_fails_the_run(
    lk: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad_prepack(model: Any, batch_hint: int = 16) -> int:
        with torch.no_grad():
            model.layers[0].weight.add_(1.0)
        return 1

    monkeypatch.setattr("chattune.kernels.prepack.prepack_linears", bad_prepack)
    with pytest.raises(lk.BenchFailed, match=r"packed at 1 rows differs from F\.linear"):
        lk.main(
            ["--model-dir", str(_model(tmp_path)), "--rows", "1", "--repeats", "1",
             "--dtype", "float32", "--results-dir", str(tmp_path / "out")]
        )  # fmt: skip


def test_a_folder_without_config_says_what_to_pass(lk: Any, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no config\.json in .*: pass --model-dir"):
        lk.model_shapes(tmp_path)


def test_an_unknown_dtype_is_refused_with_the_choices(lk: Any, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        lk.main(["--dtype", "float16"])
    assert exc.value.code == 2
    assert "choose from 'float32', 'bfloat16'" in capsys.readouterr().err
