"""The evaluate step on the fast paths: perplexity through the finetune step's packed forward,
replies from the serving engine's continuous batching.

`step.run_evaluate(EvaluateConfig)` is the step; `inputs` reads what the preprocess step
wrote; `perplexity` and `replies` are the two passes over the model; `metrics` defines BLEU
and ROUGE. This package sits above `train/` and `serving/` (it uses both) and nothing below
imports it."""
