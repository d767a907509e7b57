"""Padding-free packing for the finetune step: several conversations in one row, no padding
tokens, attention and loss kept inside each conversation.

`pack_batches` groups conversations into bins of at most `max_tokens` tokens; `PackedCollator`
turns one bin into one row (1, T). How attention stays inside each sequence in transformers 5
(sdpa and eager, on CPU and GPU): `masking_utils.create_causal_mask` detects packed sequences
from `position_ids` that restart at 0 and masks across them, but only when the batch has no
`attention_mask` and the model has no cache. The models build a `DynamicCache` whenever
`use_cache` is on, which is their config default, in training too (only gradient checkpointing
turns it off), and packed rows then silently attend across conversations. So the collator
sends `use_cache=False` with the batch (TRL's SFTTrainer sets it too). Flash-attention kernels
can take the boundaries directly: `flash_attn_kwargs=True` adds `cu_seq_lens_q/k` and
`max_length_q/k`, as `transformers.DataCollatorWithFlattening` does; sdpa and eager ignore them.

`PaddedCollator` is the padded alternative (right padding, attention_mask), for comparison and
for models or attention kernels that cannot take packed rows.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from chattune.errors import InvalidParameter

IGNORE_INDEX = -100


def pack_batches(lengths: Sequence[int], max_tokens: int, seed: int) -> list[list[int]]:
    """Group sequences into bins of at most `max_tokens` tokens, best-fit decreasing.

    Longest first, each sequence goes to the bin it fills most tightly (a new bin when none has
    room), so bins are nearly full and no padding is needed. The bin order is then shuffled by
    `seed`; inside a bin, indices are ascending. Same inputs, same bins.

    Args:
        lengths: tokens per sequence (index i is sequence i).
        max_tokens: the most tokens a bin (one packed row) may hold.
        seed: shuffles the order of the bins.

    Returns:
        Bins of sequence indices; every index appears in exactly one bin.

    Raises:
        InvalidParameter: a sequence is longer than `max_tokens`.

    Example:
        >>> pack_batches([6, 5, 4, 3, 2], max_tokens=10, seed=0)
        [[0, 2], [1, 3, 4]]
    """
    if max_tokens < 1:
        raise InvalidParameter(f"max_tokens is {max_tokens}.", fix="give a positive token budget")
    longest = max(range(len(lengths)), key=lengths.__getitem__, default=None)
    if longest is not None and lengths[longest] > max_tokens:
        raise InvalidParameter(
            f"Sequence {longest} has {lengths[longest]} tokens, more than the {max_tokens} "
            "tokens of a packed batch.",
            fix=f"raise the packed batch size to at least {lengths[longest]} tokens, or lower "
            "`max_seq_length` so that sequences are truncated to fit",
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, bin index) of bins not full, sorted
    for i in order:
        n = lengths[i]
        at = bisect_left(room, (n, -1))  # the bin with the least room that still fits
        if at < len(room):
            free, b = room.pop(at)
        else:
            free, b = max_tokens, len(bins)
            bins.append([])
        bins[b].append(i)
        if free - n > 0:
            insort(room, (free - n, b))
    for b in bins:
        b.sort()
    random.Random(seed).shuffle(bins)
    return bins


def _as_list(x: Any) -> list[int]:
    return x.tolist() if hasattr(x, "tolist") else list(x)


@dataclass
class PackedCollator:
    """Concatenate examples into one row (1, T) that the model sees as separate sequences.

    Returns `input_ids` (1, T); `labels` (1, T), -100 at the first token of every sequence so
    that no loss crosses a boundary (the last token of one sequence never predicts the first
    of the next); `position_ids` (1, T), restarting at 0 per sequence; `use_cache=False`
    (see the module docstring: without it the mask would span sequences); no attention_mask.

    Args:
        flash_attn_kwargs: also return `cu_seq_lens_q/k` (int32 cumulative lengths) and
            `max_length_q/k` for flash-attention kernels and `attention.packed_sdpa_forward`.
        supervised_logits: also return `logits_to_keep`, a (1, T) bool mask of the positions
            whose next token is a label, and `shift_labels`, those labels (K,): the model then
            projects only K hidden states onto the vocabulary instead of T (the lm_head and
            the cross-entropy over a 49k vocabulary are a fifth of a SmolLM2 step), and its
            loss is the same mean over the same labels.

    Example:
        >>> batch = PackedCollator()([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        ...                           {"input_ids": [8, 9], "labels": [8, 9]}])
        >>> batch["labels"].tolist(), batch["position_ids"].tolist()
        ([[-100, 6, 7, -100, 9]], [[0, 1, 2, 0, 1]])
    """

    flash_attn_kwargs: bool = False
    supervised_logits: bool = False

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        cu_lens = [0]
        for ex in examples:
            x = _as_list(ex["input_ids"])
            if not x:
                continue
            y = _as_list(ex["labels"]) if "labels" in ex else x
            if len(y) != len(x):
                raise ValueError(f"labels have {len(y)} tokens, input_ids {len(x)}")
            ids += x
            labels.append(IGNORE_INDEX)
            labels += y[1:]
            positions += range(len(x))
            cu_lens.append(cu_lens[-1] + len(x))
        if not ids:
            raise ValueError("PackedCollator got no tokens: every example is empty")
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "use_cache": False,
        }
        if self.flash_attn_kwargs:
            cu = torch.tensor(cu_lens, dtype=torch.int32)
            longest = max(b - a for a, b in pairwise(cu_lens))
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest)
            batch["max_length_k"] = longest
        if self.supervised_logits:
            targets = batch["labels"][:, 1:]
            keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
            keep[:, :-1] = targets != IGNORE_INDEX
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = targets[targets != IGNORE_INDEX]
        return batch


@dataclass
class PaddedCollator:
    """Right-pad examples to the longest: `input_ids`, `labels` (-100 on padding) and
    `attention_mask`, each (B, T).

    Args:
        pad_token_id: the token written in the padding (masked out, never a label).
        pad_to_multiple_of: round T up to a multiple of this (tensor-core friendly shapes).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [_as_list(ex["input_ids"]) for ex in examples]
        labels = [
            _as_list(ex["labels"]) if "labels" in ex else r
            for ex, r in zip(examples, rows, strict=True)
        ]
        width = max((len(r) for r in rows), default=0)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        label_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, y) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            label_t[i, : len(y)] = torch.tensor(y, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "labels": label_t, "attention_mask": mask}
