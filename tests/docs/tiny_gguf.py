"""Write the tiny Llama of `tests/tiny_models.py` as a GGUF file (F32), as llama.cpp's
`convert_hf_to_gguf.py` lays it out: llama tensor names, q/k rows permuted, the byte-level
BPE tokenizer as `tokenizer.ggml.model = "gpt2"`. It lets the README's
`chattune model import ./model.Q8_0.gguf` run in seconds instead of dequantizing SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of q/k rows (transformers reverses it on load)."""
    rows = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])  # (heads, 2, d/2, in)
    return rows.swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(hf_dir: Path, out: Path) -> Path:
    """Write the Llama checkpoint in `hf_dir` (safetensors + tokenizer.json) to `out`."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tok["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [""] * (max([*vocab.values(), *specials.values()]) + 1)
    for text, idx in {**vocab, **specials}.items():
        tokens[idx] = text
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(
        [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    )
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(specials[tok_cfg["eos_token"]])
    w.add_pad_token_id(specials[tok_cfg["pad_token"]])
    w.add_unk_token_id(specials[tok_cfg["unk_token"]])
    w.add_chat_template((hf_dir / "chat_template.jinja").read_text())

    weights = load_file(str(hf_dir / "model.safetensors"))
    for name, t in weights.items():
        t = t.astype(np.float32)
        if name == "model.embed_tokens.weight":
            w.add_tensor("token_embd.weight", t)
        elif name == "model.norm.weight":
            w.add_tensor("output_norm.weight", t)
        elif name == "lm_head.weight":
            w.add_tensor("output.weight", t)
        else:
            _, _, layer, rest = name.split(".", 3)  # model.layers.<i>.<rest>.weight
            part = _LAYER[rest.removesuffix(".weight")]
            if part == "attn_q":
                t = _permute(t, heads)
            elif part == "attn_k":
                t = _permute(t, kv_heads)
            w.add_tensor(f"blk.{layer}.{part}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
