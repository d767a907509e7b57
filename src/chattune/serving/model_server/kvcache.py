"""The running batch's KV cache, preallocated: a decode step writes one column, copies nothing.

transformers' `DynamicCache` grows every layer's keys and values with `torch.cat` at every
step, which copies the whole cache: 21% of a batch-16 decode step of SmolLM2 on this CPU
(bench/profiles/decode_engine.txt, before this module). `BatchCache` keeps, per layer, one
zero-initialised slab for keys and one for values,

    slab (rows_cap, kv_heads, cols_cap, head_dim)     live batch = slab[:rows, :, lo:hi]

and hands the model views of the live region. A step writes column `hi` in place. Rows are
left-padded to the common end `hi` (the engine's attention mask marks the padding), so:

- a joining row is written right-aligned at `hi`; when it is longer than the live region,
  the region extends to the left (moving right first if there are not enough columns);
- leaving rows are compacted to the front with one `index_select` (only when rows leave);
- columns that are padding in every row are dropped by moving `lo` (no copy);
- capacity doubles when it runs out, so growth costs amortised O(1) copies per column.

Padding columns always hold finite values (zeros, or an earlier row's keys), never NaN: a
masked column gets weight 0, and 0 * NaN would still poison the attention output.

Example:
    >>> cache = BatchCache.from_prefill(prefill_cache)  # a DynamicCache of one request
    >>> cache.add_row(other_prefill_cache)               # joins right-aligned
    >>> model(input_ids=..., attention_mask=mask, position_ids=pos, cache=cache)
    >>> cache.keep([0, 2], start=5)                      # rows 0 and 2 stay; 5 columns trimmed
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_COLUMN_QUANTUM = 64  # slabs are allocated in multiples of this many columns
_MIN_ROWS = 4
_ALL = slice(None)


def _round_up(n: int, q: int) -> int:
    return -(-n // q) * q


class SlabLayer(DynamicLayer):
    """One layer's keys and values in preallocated slabs; `keys`/`values` are live views."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Start from a prefill's `keys`/`values` (rows, kv_heads, n, head_dim)."""
        super().__init__()
        rows, heads, n, dim = keys.shape
        self.device = keys.device
        cols = _round_up(n + _COLUMN_QUANTUM, _COLUMN_QUANTUM)
        self.k_slab = keys.new_zeros((max(rows, _MIN_ROWS), heads, cols, dim))
        self.v_slab = values.new_zeros(self.k_slab.shape[:3] + values.shape[3:])
        self.k_slab[:rows, :, :n] = keys
        self.v_slab[:rows, :, :n] = values
        self.rows, self.lo, self.hi = rows, 0, n
        self.is_initialized = True
        self._view()

    def _view(self) -> None:
        self.keys = self.k_slab[: self.rows, :, self.lo : self.hi]
        self.values = self.v_slab[: self.rows, :, self.lo : self.hi]

    def _relocate(self, lo: int, cols: int, rows: int) -> None:
        """Move the live region to start at column `lo` of slabs at least `cols` x `rows`."""
        width = self.hi - self.lo
        cap_rows, cap_cols = self.k_slab.shape[0], self.k_slab.shape[2]
        if cols > cap_cols or rows > cap_rows:
            new_rows = cap_rows if rows <= cap_rows else max(rows, 2 * cap_rows)
            new_cols = (
                cap_cols
                if cols <= cap_cols
                else max(_round_up(cols, _COLUMN_QUANTUM), 2 * cap_cols)
            )
            for name in ("k_slab", "v_slab"):
                old = getattr(self, name)
                new = old.new_zeros((new_rows, old.shape[1], new_cols, old.shape[3]))
                new[: self.rows, :, lo : lo + width] = old[: self.rows, :, self.lo : self.hi]
                setattr(self, name, new)
        elif lo != self.lo:
            for slab in (self.k_slab, self.v_slab):
                live = slab[: self.rows, :, self.lo : self.hi].clone()
                slab[: self.rows, :, lo : lo + width] = live
        self.lo, self.hi = lo, lo + width

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `key_states`/`value_states` (rows, kv_heads, n, head_dim) at column `hi`."""
        n = key_states.shape[-2]
        if key_states.shape[0] != self.rows:
            raise ValueError(f"the batch has {self.rows} rows; got keys for {key_states.shape[0]}")
        if self.hi + n > self.k_slab.shape[2]:
            # to column 0, growing unless that leaves a quantum of room for the next steps
            self._relocate(0, self.hi - self.lo + n + _COLUMN_QUANTUM, self.rows)
        self.k_slab[: self.rows, :, self.hi : self.hi + n] = key_states
        self.v_slab[: self.rows, :, self.hi : self.hi + n] = value_states
        self.hi += n
        self._view()
        return self.keys, self.values

    def add_row(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append one row (1, kv_heads, n, head_dim), right-aligned at `hi`."""
        n = keys.shape[2]
        width = self.hi - self.lo
        if n > width:
            extra = n - width
            if extra > self.lo or self.rows == self.k_slab.shape[0]:
                # too few columns on the left, or no free row: move (and grow) the slabs
                self._relocate(extra, n + _COLUMN_QUANTUM, self.rows + 1)
            self.lo -= extra
            # the newly live columns of the other rows are padding: make them finite zeros
            self.k_slab[: self.rows, :, self.lo : self.lo + extra] = 0
            self.v_slab[: self.rows, :, self.lo : self.lo + extra] = 0
        elif self.rows == self.k_slab.shape[0]:
            self._relocate(self.lo, self.k_slab.shape[2], self.rows + 1)
        r, pad = self.rows, self.hi - n
        self.k_slab[r, :, self.lo : pad] = 0
        self.v_slab[r, :, self.lo : pad] = 0
        self.k_slab[r, :, pad : self.hi] = keys[0]
        self.v_slab[r, :, pad : self.hi] = values[0]
        self.rows += 1
        self._view()

    def keep(self, rows: Sequence[int], start: int) -> None:
        """Keep only `rows` (in that order) and drop the first `start` live columns."""
        if list(rows) != list(range(len(rows))):
            idx = torch.tensor(rows, device=self.device)
            for slab in (self.k_slab, self.v_slab):
                slab[: len(rows)] = slab.index_select(0, idx)
        self.rows = len(rows)
        self.lo += start
        self._view()

    def get_max_length(self) -> int:
        return -1


class BatchCache(DynamicCache):
    """A `DynamicCache` of `SlabLayer`s: what the engine passes to the model for its batch.

    `bench/baselines.py`'s `ConcatBatchCache` is the same batch kept as transformers keeps it
    (a copy per step): the benchmark's baseline, passed as `Engine(batch_cache=...)`.
    """

    def __init__(self, layers: list[SlabLayer]) -> None:
        super().__init__()
        self.layers = layers

    @classmethod
    def from_prefill(cls, cache: DynamicCache, cols: slice = _ALL) -> BatchCache:
        """The batch from a prefill's `DynamicCache` (one request's, or a left-padded batch's);
        `cols`: the request's columns of a packed prefill."""
        return cls([SlabLayer(x.keys[:, :, cols], x.values[:, :, cols]) for x in cache.layers])

    @property
    def rows(self) -> int:
        return self.layers[0].rows

    def add_row(self, cache: DynamicCache, cols: slice = _ALL) -> None:
        """Add one prefilled request (a batch-1 `DynamicCache`; `cols`: the request's columns
        of a packed prefill), right-aligned."""
        for mine, theirs in zip(self.layers, cache.layers, strict=True):
            mine.add_row(theirs.keys[:, :, cols], theirs.values[:, :, cols])

    def keep(self, rows: Sequence[int], start: int = 0) -> None:
        """Keep only `rows` and drop the first `start` columns (padding in every kept row)."""
        for layer in self.layers:
            layer.keep(rows, start)
