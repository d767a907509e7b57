"""Baselines the benchmarks measure chattune's fast paths against, kept out of `src/`.

`ConcatBatchCache`: the running batch's KV cache kept as transformers keeps it (plain
`DynamicLayer`s; a join or a decode step concatenates, copying the whole cache), with the
interface of `chattune.serving.model_server.kvcache.BatchCache`, so an engine built with
`Engine(model, tok, batch_cache=ConcatBatchCache)` decodes as before the preallocated cache.
tests/serving/model_server/test_kvcache.py also checks `BatchCache` against it.

`prefill_one_at_a_time`: an engine that prefills each prompt alone, as before prompts that
arrive together were packed into one forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_ALL = slice(None)


def _left_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, width - x.shape[2], 0))


class ConcatBatchCache(DynamicCache):
    """`BatchCache`'s interface over plain `DynamicLayer`s: joins and steps concatenate."""

    @classmethod
    def from_prefill(cls, cache: DynamicCache, cols: slice = _ALL) -> ConcatBatchCache:
        out = cls()
        out.layers = []
        for layer in cache.layers:
            mine = DynamicLayer()
            mine.lazy_initialization(layer.keys, layer.values)
            mine.keys, mine.values = layer.keys[:, :, cols], layer.values[:, :, cols]
            out.layers.append(mine)
        return out

    @property
    def rows(self) -> int:
        return self.layers[0].keys.shape[0]

    def add_row(self, cache: DynamicCache, cols: slice = _ALL) -> None:
        for mine, theirs in zip(self.layers, cache.layers, strict=True):
            k, v = theirs.keys[:, :, cols], theirs.values[:, :, cols]
            w = max(mine.keys.shape[2], k.shape[2])
            mine.keys = torch.cat([_left_pad(mine.keys, w), _left_pad(k, w)])
            mine.values = torch.cat([_left_pad(mine.values, w), _left_pad(v, w)])

    def keep(self, rows: Sequence[int], start: int = 0) -> None:
        idx = torch.tensor(rows, device=self.layers[0].keys.device)
        for layer in self.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, start:]
            layer.values = layer.values.index_select(0, idx)[:, :, start:]


def prefill_one_at_a_time(engine: Any) -> Any:
    """`engine` (a `chattune.serving.model_server.engine.Engine`, before its first request)
    with each prompt prefilled alone: the benchmark's baseline of the packed prefill."""
    engine._packed_prefill = False  # the engine's own fallback for models it cannot pack
    return engine
