"""Text-overlap metrics of the evaluate step: BLEU-1..4 and ROUGE-1/2/L/Lsum.

The names and definitions are those of Azure ML's `compute_metrics` for chat completion
(the `azureml-metrics` package), which calls Hugging Face `evaluate`'s `bleu` and `rouge`
with its defaults: no smoothing, no stemming. We call the libraries underneath directly
(`sacrebleu`, `rouge-score`) so that nothing is fetched from a hub at run time:

- `bleu_n` (n = 1..4): corpus-level BLEU (Papineni et al. 2002) with uniform weights 1/n
  over the 1..n-gram modified precisions and the corpus brevity penalty; texts tokenized
  with the `13a` tokenizer (mteval-v13a, case kept); no smoothing, so a corpus without a
  single matching n-gram of some order k <= n scores 0. This is `evaluate.load("bleu")`
  with `max_order=n, smooth=False` (its default tokenizer is the same 13a), computed with
  `sacrebleu.metrics.BLEU(max_ngram_order=n, smooth_method="none", tokenize="13a")`.
  Range 0..1 (sacrebleu's 0..100 divided by 100).
- `rouge1`, `rouge2`, `rougeL`, `rougeLsum`: `rouge_score.RougeScorer` F1 for each
  (reference, prediction) pair, tokenized by rouge-score's default tokenizer (lower case,
  runs of [a-z0-9]; other characters separate tokens), no stemming; `rougeLsum` splits
  texts into "sentences" on newlines only. The corpus value is the arithmetic mean of the
  per-pair F1. `evaluate`'s default (`use_aggregator=True`) reports the median of 1000
  bootstrap resamples of that mean, which differs from it only by resampling noise; we
  report the mean itself so that the same predictions always give the same number.
"""

from __future__ import annotations

from collections.abc import Sequence

BLEU_ORDERS = (1, 2, 3, 4)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def bleu_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 of `predictions` against one reference each.

    Args:
        predictions: generated texts.
        references: the expected text for each prediction, same order and length.

    Returns:
        `{"bleu_1": ..., "bleu_4": ...}`, each in 0..1; 0.0 each for empty inputs.

    Example:
        >>> bleu_scores(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu_4"]
        1.0
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(predictions, references)
    if not predictions:
        return {f"bleu_{n}": 0.0 for n in BLEU_ORDERS}
    out: dict[str, float] = {}
    for n in BLEU_ORDERS:
        bleu = BLEU(max_ngram_order=n, smooth_method="none", tokenize="13a")
        score = bleu.corpus_score(list(predictions), [list(references)]).score / 100.0
        out[f"bleu_{n}"] = min(score, 1.0)  # sacrebleu's exp(log(...)) can give 1.0000000000000004
    return out


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F1 of `predictions` against one reference each.

    Args:
        predictions: generated texts.
        references: the expected text for each prediction, same order and length.

    Returns:
        `{"rouge1": ..., "rouge2": ..., "rougeL": ..., "rougeLsum": ...}`, each in 0..1;
        0.0 each for empty inputs.
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    if not predictions:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)  # (target, prediction), as `evaluate` calls it
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: total / len(predictions) for key, total in totals.items()}


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU-1..4 and ROUGE-1/2/L/Lsum together (see the module docstring for definitions)."""
    return {**bleu_scores(predictions, references), **rouge_scores(predictions, references)}


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: "
            "pass one reference per prediction"
        )
