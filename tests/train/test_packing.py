from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from chattune.errors import InvalidParameter
from chattune.train.packing import IGNORE_INDEX, PackedCollator, PaddedCollator, pack_batches

ATOL = 1e-4


# -- pack_batches ---------------------------------------------------------------------------------
def test_best_fit_decreasing_fills_bins() -> None:
    # first fit in file order needs 4 bins ([2, 5, 1], [4, 3], [7], [8]); best fit decreasing
    # needs 3, all full: 8+2, 7+3, 5+4+1
    bins = pack_batches([2, 5, 4, 7, 1, 3, 8], max_tokens=10, seed=0)
    assert sorted(bins) == [[0, 6], [1, 2, 4], [3, 5]]


def test_every_index_once_within_budget_and_deterministic() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    bins = pack_batches(lengths, max_tokens=512, seed=3)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert all(b == sorted(b) for b in bins)
    # nearly full: no more than 3% more bins than the token count needs
    assert len(bins) <= 1.03 * sum(lengths) / 512 + 1
    assert pack_batches(lengths, 512, seed=3) == bins
    other = pack_batches(lengths, 512, seed=4)
    assert other != bins and sorted(other) == sorted(bins)  # same bins, another order


def test_sequence_longer_than_budget_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="Sequence 1 has 11 tokens") as err:
        pack_batches([3, 11, 2], max_tokens=10, seed=0)
    assert "max_seq_length" in err.value.fix
    assert pack_batches([], max_tokens=10, seed=0) == []


# -- collators ------------------------------------------------------------------------------------
def test_packed_collator_layout() -> None:
    batch = PackedCollator(flash_attn_kwargs=True)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([8, 9])},
            {"input_ids": [10, 11, 12, 13], "labels": [10, -100, 12, 13]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, 12, 13]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["use_cache"] is False
    assert "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 4


def test_padded_collator_layout() -> None:
    batch = PaddedCollator(pad_token_id=0, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, 9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]


# -- the proof: packed sequences see only themselves ----------------------------------------------
@pytest.fixture(params=["tiny_llama_dir", "tiny_phi3_dir"])
def model_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def examples(vocab: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n, prompt in ((9, 4), (17, 6), (5, 2)):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def load(model_dir: Path, attn: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation=attn, dtype=torch.float32
    )
    return model.eval()


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting labels[t + 1] from logits[t]; 0 where ignored."""
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="none")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("flash_kwargs", [False, True], ids=["plain", "with-cu-seqlens"])
def test_packed_equals_each_sequence_alone(model_dir: Path, attn: str, flash_kwargs: bool) -> None:
    model = load(model_dir, attn)
    exs = examples(model.config.vocab_size)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in exs]
        batch = PackedCollator(flash_attn_kwargs=flash_kwargs)(exs)
        out = model(**batch)
    logits, labels = out.logits[0], batch["labels"][0]

    start, summed = 0, torch.tensor(0.0)
    packed_losses = token_losses(logits, labels)
    for e, ref in zip(exs, alone, strict=True):
        n = len(e["input_ids"])
        torch.testing.assert_close(logits[start : start + n], ref, atol=ATOL, rtol=0)
        ref_losses = token_losses(ref, torch.tensor(e["labels"]))
        torch.testing.assert_close(
            packed_losses[start : start + n - 1], ref_losses, atol=ATOL, rtol=0
        )
        summed += ref_losses.sum()
        start += n
    # the last token of a sequence never predicts the first of the next one
    boundaries = [len(exs[0]["input_ids"]), len(exs[0]["input_ids"]) + len(exs[1]["input_ids"])]
    assert all(labels[b] == IGNORE_INDEX for b in boundaries)
    n_targets = int((labels[1:] != IGNORE_INDEX).sum())
    assert n_targets == sum(sum(y != IGNORE_INDEX for y in e["labels"][1:]) for e in exs)
    torch.testing.assert_close(out.loss * n_targets, summed, atol=ATOL, rtol=1e-5)


def test_plain_concatenation_would_leak_across_sequences(model_dir: Path) -> None:
    """The control: without restarting positions the logits differ, so the test above can fail."""
    model = load(model_dir, "sdpa")
    exs = examples(model.config.vocab_size)
    batch = PackedCollator()(exs)
    with torch.no_grad():
        second_alone = model(input_ids=torch.tensor([exs[1]["input_ids"]])).logits[0]
        leaked = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    n0, n1 = len(exs[0]["input_ids"]), len(exs[1]["input_ids"])
    assert (leaked[n0 : n0 + n1] - second_alone).abs().max() > 1e-2


def test_packed_loss_trains_like_the_sequences_alone(tiny_llama_dir: Path) -> None:
    """In training mode (no dropout in the tiny configs) the gradients match too."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).train()
    exs = examples(model.config.vocab_size)

    batch = PackedCollator()(exs)
    n_targets = int((batch["labels"][0, 1:] != IGNORE_INDEX).sum())
    (model(**batch).loss * n_targets).backward()
    packed_grad = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    for e in exs:
        n = sum(y != IGNORE_INDEX for y in e["labels"][1:])
        out = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
        (out.loss * n).backward()
    torch.testing.assert_close(
        packed_grad, model.model.embed_tokens.weight.grad, atol=ATOL, rtol=1e-4
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_batch_equals_each_sequence_alone(model_dir: Path, attn: str) -> None:
    model = load(model_dir, attn)
    exs = examples(model.config.vocab_size)
    batch = PaddedCollator(pad_token_id=model.config.pad_token_id)(exs)
    with torch.no_grad():
        out = model(**batch)
        for i, e in enumerate(exs):
            n = len(e["input_ids"])
            ref = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            torch.testing.assert_close(out.logits[i, :n], ref, atol=ATOL, rtol=0)


# -- the fast paths: attention per packed sequence, logits only where a label is -----------------
@pytest.fixture
def packed_attention() -> str:
    from chattune.kernels.attention import register

    return register()


@pytest.mark.parametrize("supervised_logits", [False, True], ids=["all-logits", "label-logits"])
def test_fast_paths_give_the_same_loss_and_gradients(
    model_dir: Path, packed_attention: str, supervised_logits: bool
) -> None:
    """`chattune_packed` attention + supervised-only logits against sdpa's block-diagonal mask
    over the full logits: same loss, same gradients, on Llama (GQA) and Phi-3."""
    exs = examples(AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size)
    results = []
    for attn, fast in (("sdpa", False), (packed_attention, True)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, attn_implementation=attn, dtype=torch.float32
        ).train()
        collate = PackedCollator(
            flash_attn_kwargs=fast, supervised_logits=fast and supervised_logits
        )
        batch = collate(exs)
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads, batch))
    (ref, ref_grads, _), (fast_out, fast_grads, batch) = results
    torch.testing.assert_close(fast_out.loss, ref.loss, atol=ATOL, rtol=1e-5)
    assert ref_grads.keys() == fast_grads.keys() and len(ref_grads) > 5
    for name, g in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=ATOL, rtol=1e-4, msg=name)
    if supervised_logits:
        # only the positions that predict a label were projected onto the vocabulary
        n_targets = int((batch["labels"][0, 1:] != IGNORE_INDEX).sum())
        assert fast_out.logits.shape == (n_targets, model.config.vocab_size)
        assert batch["shift_labels"].tolist() == [
            y for y in batch["labels"][0, 1:].tolist() if y != IGNORE_INDEX
        ]


def test_packed_attention_needs_the_sequence_boundaries(
    tiny_llama_dir: Path, packed_attention: str
) -> None:
    """Without cu_seq_lens it would attend across conversations: it refuses, naming the fix."""
    model = load(tiny_llama_dir, packed_attention)
    batch = PackedCollator()(examples(model.config.vocab_size))
    with pytest.raises(ValueError, match=r"cu_seq_lens_q.*attn_implementation='sdpa'"):
        model(**batch)
