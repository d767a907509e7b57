"""Tiny chat models (2 layers, hidden 32) and a tiny BPE tokenizer, built in the test session.

Never a download: the tokenizer is trained here on a few sentences, the models are
randomly initialised Llama and Phi-3 configs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "Hello, how are you doing today?",
    "I am fine, thank you. What about you?",
    "The weather is nice and sunny in the park.",
    "Can you tell me a joke about computers?",
    "Why did the programmer quit his job? Because he did not get arrays.",
    "Fine-tuning a chat model needs data, a base model and patience.",
    "What is the capital of France? Paris is the capital of France.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
] * 20

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def build_tokenizer(specials: list[str], eos: str, template: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token=eos, pad_token=eos
    )
    fast.chat_template = template
    return fast


def save_tiny_llama(path: Path, head_dim: int | None = None) -> Path:
    """`head_dim`: None = hidden / heads = 8; vLLM's CPU attention takes only 32, 64, ...
    (tests/serving/vllm use 32)."""
    tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", CHATML)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        **({"head_dim": head_dim} if head_dim else {}),
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_phi3(path: Path) -> Path:
    specials = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = build_tokenizer(specials, "<|endoftext|>", PHI3)
    torch.manual_seed(0)
    cfg = Phi3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    Phi3ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_chatty(src: Path, dst: Path, seed: int = 1, std: float = 1.0) -> Path:
    """Copy the model of `src` to `dst` with every non-norm weight redrawn N(0, std)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if "norm" not in name:
                w.copy_(torch.randn(w.shape, generator=gen) * std)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def make_adapter(base: Path, dst: Path, seed: int, r: int = 4) -> Path:
    """A LoRA adapter on `base` with random non-zero A and B (PEFT zeroes B at init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in peft_model.named_parameters():
            if "lora_" in name:
                w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(dst)
    return dst
