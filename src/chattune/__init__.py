"""chattune: fine-tune chat models, register them and serve them, on your own machines."""

import warnings

__version__ = "0.1.0"

# Library warnings about code that is not ours, dropped here, where every chattune process
# (the CLI, a job's runner and finetune step, a model server) starts. A warning about a call
# of ours is fixed at that call instead. Each filter names one message; drop it when the
# library no longer warns (tests/cli/test_no_warnings.py shows it again).
#
# peft 0.21 reads `model.is_gradient_checkpointing` whenever it wraps a model in a PeftModel
# (get_peft_model, PeftModel.from_pretrained), a property transformers 5 deprecated: every
# LoRA fine-tune, evaluate, convert and adapter deployment printed it.
warnings.filterwarnings(
    "ignore",
    message="`is_gradient_checkpointing` is deprecated",
    category=FutureWarning,
    module=r"transformers\.modeling_utils",
)
