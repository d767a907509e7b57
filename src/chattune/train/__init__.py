"""The work of a fine-tuning job: validate, import, preprocess, finetune, evaluate, convert."""
