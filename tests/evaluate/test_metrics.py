"""The text-overlap metrics (`evaluate.metrics`): BLEU and ROUGE as Azure ML defines them."""

from __future__ import annotations

import pytest
from nltk.translate.bleu_score import corpus_bleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from chattune.evaluate.metrics import bleu_scores, generation_metrics, rouge_scores


def test_bleu_is_corpus_bleu_with_13a_tokens() -> None:
    preds = ["the cat sat on the mat today", "Hello, how are you doing?", "Paris is nice."]
    refs = ["the cat sat on a mat today", "Hello, how are you today?", "Paris is the capital."]
    ours = bleu_scores(preds, refs)
    tok = Tokenizer13a()
    hyp = [tok(p).split() for p in preds]
    ref = [[tok(r).split()] for r in refs]
    for n in (1, 2, 3, 4):
        expected = corpus_bleu(ref, hyp, weights=[1.0 / n] * n)  # nltk, no smoothing
        assert ours[f"bleu_{n}"] == pytest.approx(expected, rel=1e-9), n
    assert 0 < ours["bleu_4"] < ours["bleu_1"] < 1
    # no matching 4-gram anywhere and no smoothing: BLEU-4 is 0, BLEU-1 is not
    short = bleu_scores(["a b c"], ["a b d"])
    assert short["bleu_4"] == 0.0 and short["bleu_1"] == pytest.approx(2 / 3)


def test_rouge_values_by_hand() -> None:
    got = rouge_scores(["the cat sat", "Running dogs"], ["The cat ran", "running dog"])
    # pair 1: unigrams 2/3 match, bigrams 1/2; pair 2: no stemming, so only "running" matches
    assert got["rouge1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert got["rouge2"] == pytest.approx((1 / 2 + 0) / 2)
    assert got["rougeL"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # rougeLsum works on newline-separated sentences: reordering them keeps it at 1, not rougeL
    swapped = rouge_scores(["b c\na d"], ["a d\nb c"])
    assert swapped["rougeLsum"] == pytest.approx(1.0) and swapped["rougeL"] < 1.0
    all_metrics = generation_metrics(["same text here ok"], ["same text here ok"])
    assert all(v == pytest.approx(1.0) for v in all_metrics.values()) and len(all_metrics) == 8
    with pytest.raises(ValueError, match="one reference per prediction"):
        rouge_scores(["a"], [])
