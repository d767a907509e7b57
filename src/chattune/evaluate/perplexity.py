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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from chattune.kernels.attention import SERVING_ATTENTIONS, register
from chattune.train.packing import IGNORE_INDEX, PackedCollator, pack_batches

Log = Callable[[str], None]
PACKED_TOKENS = 2048  # tokens per packed row: logits of at most this many positions at once
_CE_ROWS = 1024  # positions upcast to fp32 per cross-entropy call (1024 x 49k x 4 B = 200 MB)


def token_nll(
    model: Any,
    rows: Sequence[tuple[list[int], list[int]]],
    max_tokens: int = PACKED_TOKENS,
    log: Log = lambda _msg: None,
) -> tuple[float, int]:
    """Mean NLL per label token over `rows` (nats), and the number of label tokens.

    Token t's label is scored from the logits at position t-1 (as transformers' causal LM
    loss does), in float32 whatever the model's dtype. A conversation longer than
    `max_tokens` goes alone in its row; rows without a label token are not run.

    Args:
        model: a causal LM in eval mode (a `PeftModel` too) whose attention is sdpa, a
            serving attention or flash attention (`packed_attention` switches it).
        rows: (input_ids, labels) per conversation, labels -100 where nothing is scored.
        max_tokens: most tokens packed into one forward.
        log: called with a line per packed row ("perplexity 3/10 packed rows").

    Raises:
        ValueError: no row has a label token.
    """
    scored = [r for r in rows if any(lab != IGNORE_INDEX for lab in r[1][1:])]
    if not scored:
        raise ValueError("no row has a label token to score (every label is -100)")
    lengths = [len(ids) for ids, _ in scored]
    bins = pack_batches(lengths, max(max_tokens, *lengths), seed=0)  # the sum ignores the order
    collate = PackedCollator(flash_attn_kwargs=True, supervised_logits=True)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with packed_attention(model), torch.inference_mode():
        for b, bin_ in enumerate(bins, 1):
            batch = collate([{"input_ids": scored[i][0], "labels": scored[i][1]} for i in bin_])
            targets = batch.pop("shift_labels").to(device)  # (K,): the scored tokens
            del batch["labels"]  # the loss is summed here, in fp32, not averaged by the model
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits = model(**batch).logits  # (K, V): the label positions only
            for part, y in zip(logits.split(_CE_ROWS), targets.split(_CE_ROWS), strict=True):
                total += F.cross_entropy(part.float(), y, reduction="sum").item()
            count += len(targets)
            log(f"perplexity {b}/{len(bins)} packed rows")
    return total / count, count


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
