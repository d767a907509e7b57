"""The preallocated batch KV cache holds exactly what concatenation (transformers'
DynamicCache; bench/baselines.py's `ConcatBatchCache`, the benchmark's baseline) would,
through joins, steps past capacity, leaves and trims; the engine's own tests
(test_engine.py) decode with it against `generate`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import DynamicCache

from chattune.serving.model_server.kvcache import BatchCache

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from baselines import ConcatBatchCache


def _prefill(n: int, layers: int = 2, heads: int = 3, dim: int = 4, seed: int = 0) -> DynamicCache:
    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for i in range(layers):
        cache.update(
            torch.randn(1, heads, n, dim, generator=g),
            torch.randn(1, heads, n, dim, generator=g),
            i,
        )
    return cache


def _same(cache: BatchCache, ref: ConcatBatchCache) -> None:
    assert cache.rows == ref.rows
    for layer, theirs in zip(cache.layers, ref.layers, strict=True):
        assert layer.keys.shape == theirs.keys.shape
        assert torch.equal(layer.keys, theirs.keys) and torch.equal(layer.values, theirs.values)
    assert cache.get_seq_length() == ref.get_seq_length()


def test_joins_steps_leaves_and_growth_match_concatenation():
    g = torch.Generator().manual_seed(1)
    first = _prefill(5, seed=1)
    cache, ref = BatchCache.from_prefill(first), ConcatBatchCache.from_prefill(_prefill(5, seed=1))
    _same(cache, ref)
    # a shorter row, then a much longer one (the region extends left, the slabs move and grow),
    # then more rows than the initial row capacity
    for seed, n in enumerate([3, 150, 7, 2, 9], start=2):
        joiner = _prefill(n, seed=seed)
        cache.add_row(joiner)
        ref.add_row(joiner)
        _same(cache, ref)
    assert cache.rows == 6
    # decode steps past the column capacity
    cols = cache.layers[0].k_slab.shape[2]
    for _ in range(cols - cache.layers[0].hi + 3):
        ks = [torch.randn(cache.rows, 3, 1, 4, generator=g) for _ in range(2)]
        vs = [torch.randn(cache.rows, 3, 1, 4, generator=g) for _ in range(2)]
        for i in range(2):
            cache.update(ks[i], vs[i], i)
            ref.update(ks[i], vs[i], i)
    assert cache.layers[0].k_slab.shape[2] > cols
    _same(cache, ref)
    # rows leave out of order, with padding columns trimmed; then one joins again
    cache.keep([4, 0, 5], start=2)
    ref.keep([4, 0, 5], 2)
    _same(cache, ref)
    cache.keep([0, 1, 2], start=1)
    ref.keep([0, 1, 2], 1)
    _same(cache, ref)
    joiner = _prefill(4, seed=9)
    cache.add_row(joiner)
    ref.add_row(joiner)
    _same(cache, ref)


def test_a_step_does_not_copy_the_cache():
    cache = BatchCache.from_prefill(_prefill(10))
    before = cache.layers[0].k_slab.data_ptr()
    keys, _ = cache.layers[0].update(torch.ones(1, 3, 1, 4), torch.ones(1, 3, 1, 4))
    assert cache.layers[0].k_slab.data_ptr() == before
    assert keys.data_ptr() == before  # the model gets a view of the slab
    assert torch.equal(keys[0, :, -1], torch.ones(3, 4))


def test_padding_columns_are_zero_not_stale():
    cache = BatchCache.from_prefill(_prefill(2, seed=3))
    cache.add_row(_prefill(6, seed=4))  # row 0 gets 4 columns of padding on the left
    assert torch.count_nonzero(cache.layers[0].keys[0, :, :4]) == 0
    cache.keep([1])
    cache.add_row(_prefill(3, seed=5))  # reuses slab row 1, whose old values must not show
    assert torch.count_nonzero(cache.layers[1].values[1, :, :3]) == 0


def test_wrong_batch_size_is_refused():
    cache = BatchCache.from_prefill(_prefill(3))
    try:
        cache.layers[0].update(torch.ones(2, 3, 1, 4), torch.ones(2, 3, 1, 4))
    except ValueError as exc:
        assert "1 rows" in str(exc)
    else:
        raise AssertionError("a step with the wrong number of rows was accepted")
