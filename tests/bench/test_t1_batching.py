"""The length-aware batching count: padded batches pay for their longest row, packed rows
for their tokens only, and best fit never needs more rows than filling in order."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.bench.conftest import load_bench


@pytest.fixture(scope="module")
def t1b() -> Any:
    return load_bench("t1_batching")


def test_padded_batches_compute_their_longest_row(t1b: Any) -> None:
    assert t1b.padded([10, 2, 3, 9, 1], 2) == {"steps": 3, "computed_tokens": 20 + 18 + 1}
    assert t1b.padded(sorted([10, 2, 3, 9, 1]), 2) == {"steps": 3, "computed_tokens": 4 + 18 + 10}


def test_next_fit_opens_a_row_when_the_next_sequence_does_not_fit(t1b: Any) -> None:
    assert t1b.next_fit([6, 5, 4, 3, 2], 10) == {"steps": 3, "computed_tokens": 20}


def test_best_fit_needs_no_more_rows_than_filling_in_order(t1b: Any) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 512) for _ in range(500)]
    best, in_order = t1b.best_fit(lengths, 2048), t1b.next_fit(lengths, 2048)
    assert best["steps"] <= in_order["steps"]
    assert best["steps"] >= -(-sum(lengths) // 2048)  # never below the token bound
