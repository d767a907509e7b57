"""Which token ids end a model's reply: the one rule that serving and evaluation stop on.

A reply ends at any of: `generation_config`'s and `config`'s `eos_token_id` (an int or a
list), the tokenizer's eos token, and the special token the chat template writes right after
an assistant's turn (`<|im_end|>`, `<|end|>`, `<|eot_id|>`), which many configs do not name.
The last is found by rendering a probe conversation with the model's own chat template.
"""

from __future__ import annotations

from typing import Any

_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello friend"}]


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The special token the chat template writes right after an assistant's reply, as a
    one-element list; empty when the template writes none (or cannot render the probe)."""
    try:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    except Exception:  # no template, or one that refuses the probe: no end-of-turn token
        return []
    content = _PROBE[-1]["content"]
    at = text.rfind(content) if isinstance(text, str) else -1
    if at < 0:
        return []
    tail = tokenizer(text[at + len(content) :], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    return [tail[0]] if tail and tail[0] in special else []


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends an answer of `model` (see the module docstring), sorted."""
    ids: list[int] = []
    for src in (getattr(model, "generation_config", None), model.config):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids += end_of_turn_ids(tokenizer)
    return sorted(set(ids))
