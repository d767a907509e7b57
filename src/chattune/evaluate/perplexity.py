"""Perplexity through the finetune step's packed forward.

The test conversations are packed back to back into rows of at most `max_tokens` tokens
(`train.packing.pack_batches`, `PackedCollator`), attention kept inside each conversation
(`kernels.attention.PACKED_ATTENTION`: causal attention per conversation, no mask, no padding),
and logits computed only where the next token is a label: the hidden states are sliced before
the lm_head (`logits_to_keep`, a bool mask), so the vocabulary projection (49k columns for
SmolLM2) runs on the scored positions only. The padded way it replaced projected every
position of batches padded to their longest row, in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from chattune.kernels.attention import SERVING_ATTENTIONS, register
from chattune.models.loading import cache_keyword
from chattune.train.packing import IGNORE_INDEX, PackedCollator, pack_batches

Log = Callable[[str], None]
PACKED_TOKENS = 2048  # tokens per packed row: logits of at most this many positions at once
_CE_ROWS = 1024  # positions upcast to fp32 per cross-entropy call (1024 x 49k x 4 B = 200 MB)


class TokenNll(NamedTuple):
    loss: float  # mean NLL per label token, nats
    tokens: int  # label tokens scored
    prefixes: dict[int, Any]  # row index -> DynamicCache of its first tokens (`keep_prefix`)


def token_nll(
    model: Any,
    rows: Sequence[tuple[list[int], list[int]]],
    max_tokens: int = PACKED_TOKENS,
    log: Log = lambda _msg: None,
    *,
    keep_prefix: Mapping[int, int] | None = None,
) -> TokenNll:
    """Mean NLL per label token over `rows` (nats), the number of label tokens, and the keys
    and values of the rows' prefixes asked for in `keep_prefix`.

    Token t's label is scored from the logits at position t-1 (as transformers' causal LM
    loss does), in float32 whatever the model's dtype. A conversation longer than
    `max_tokens` goes alone in its row; rows without a label token are not run.

    Args:
        model: a causal LM in eval mode (a `PeftModel` too) whose attention is sdpa, a
            serving attention or flash attention (`packed_attention` switches it).
        rows: (input_ids, labels) per conversation, labels -100 where nothing is scored.
        max_tokens: most tokens packed into one forward.
        log: called with a line per packed row ("perplexity 3/10 packed rows").
        keep_prefix: row index -> k: keep the keys and values of that row's first k tokens
            (a `DynamicCache` each, of the model's dtype), so that generating from a prompt
            that starts with them prefills only the rest (`Engine.submit(prefix=...)`). A row
            without a label token is not run and gets none.

    Raises:
        ValueError: no row has a label token.
    """
    keep = keep_prefix or {}
    index = [i for i, r in enumerate(rows) if any(lab != IGNORE_INDEX for lab in r[1][1:])]
    scored = [rows[i] for i in index]
    if not scored:
        raise ValueError("no row has a label token to score (every label is -100)")
    lengths = [len(ids) for ids, _ in scored]
    bins = pack_batches(lengths, max(max_tokens, *lengths), seed=0)  # the sum ignores the order
    collate = PackedCollator(flash_attn_kwargs=True, supervised_logits=True)
    device = next(model.parameters()).device
    cache_kw = cache_keyword(model)
    total, count, prefixes = 0.0, 0, {}
    with packed_attention(model), torch.inference_mode():
        for b, bin_ in enumerate(bins, 1):
            batch = collate([{"input_ids": scored[i][0], "labels": scored[i][1]} for i in bin_])
            targets = batch.pop("shift_labels").to(device)  # (K,): the scored tokens
            del batch["labels"]  # the loss is summed here, in fp32, not averaged by the model
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            starts = batch["cu_seq_lens_q"].tolist()  # the conversations' columns, in bin order
            kept = [(index[i], a) for i, a in zip(bin_, starts, strict=False) if index[i] in keep]
            cache = DynamicCache() if kept else None
            if cache is not None:
                batch.update({cache_kw: cache, "use_cache": True})
            out = model(**batch)
            for part, y in zip(out.logits.split(_CE_ROWS), targets.split(_CE_ROWS), strict=True):
                total += F.cross_entropy(part.float(), y, reduction="sum").item()
            count += len(targets)
            for row, start in kept:
                prefixes[row] = _columns(cache, start, keep[row])
            del out, cache
            log(f"perplexity {b}/{len(bins)} packed rows")
    return TokenNll(total / count, count, prefixes)


def _columns(cache: Any, start: int, length: int) -> Any:
    """A new `DynamicCache` of `length` columns of `cache` from `start` (copied, so the packed
    row's cache can be freed)."""
    out, cols = DynamicCache(), slice(start, start + length)
    for layer_idx, layer in enumerate(cache.layers):
        out.update(layer.keys[:, :, cols].clone(), layer.values[:, :, cols].clone(), layer_idx)
    return out


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Run `model` with per-conversation attention on packed rows, then restore its own.

    sdpa (or a serving attention built on it) is switched to `PACKED_ATTENTION`, which reads
    the conversations' boundaries (`cu_seq_lens_q`) and builds no mask; flash attention takes
    the boundaries itself. Any other attention keeps its own way: transformers then masks
    across conversations from the restarting `position_ids` (correct, with a T x T mask).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = getattr(base.config, "_attn_implementation", None)
    if impl != "sdpa" and impl not in SERVING_ATTENTIONS.values():
        yield
        return
    base.set_attn_implementation(register())
    try:
        yield
    finally:
        base.set_attn_implementation(impl)
