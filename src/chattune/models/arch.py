"""Transformer shapes: parameter counts and linear-layer shapes from a model config.

The memory estimate (`chattune.compute.estimate`) and LoRA sizing read these numbers, so
a card and an imported checkpoint answer the same questions the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ArchSpec(BaseModel):
    """The shape of a decoder-only transformer (Llama, Phi-3, Qwen2 families)."""

    model_config = ConfigDict(extra="forbid")

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    fused_qkv: bool = False  # Phi-3: one qkv_proj
    fused_gate_up: bool = False  # Phi-3: one gate_up_proj

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ArchSpec:
        """Read the fields from a Hugging Face `config.json` dict."""
        model_type = cfg.get("model_type", "llama")
        return cls(
            model_type=model_type,
            hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=cfg.get("head_dim"),
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            fused_qkv=model_type == "phi3",
            fused_gate_up=model_type == "phi3",
        )

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_linears(self) -> dict[str, tuple[int, int]]:
        """Linear layers of one decoder block: module name -> (in_features, out_features)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.dim_head
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = (
            {"qkv_proj": (h, q + 2 * kv)}
            if self.fused_qkv
            else {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv)}
        )
        mlp = (
            {"gate_up_proj": (h, 2 * i)}
            if self.fused_gate_up
            else {"gate_proj": (h, i), "up_proj": (h, i)}
        )
        return {**attn, "o_proj": (q, h), **mlp, "down_proj": (i, h)}

    def num_parameters(self) -> int:
        """Total parameters: embeddings, blocks (linears, biases, 2 norms), final norm, head."""
        h = self.hidden_size
        block = sum(a * b for a, b in self.layer_linears().values()) + 2 * h
        if self.qkv_bias:
            block += (self.num_attention_heads + 2 * self.num_key_value_heads) * self.dim_head
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embed + self.num_hidden_layers * block + h + head

    def lora_parameters(self, r: int, target_modules: list[str]) -> int:
        """Trainable LoRA parameters: r * (in + out) for every targeted linear of every block.

        Raises:
            ValueError: a target module is not a linear layer of this architecture.
        """
        linears = self.layer_linears()
        unknown = [m for m in target_modules if m not in linears]
        if unknown:
            raise ValueError(
                f"LoRA target modules {unknown} are not linear layers of this {self.model_type} "
                f"model; choose from {sorted(linears)}."
            )
        per_block = sum(r * (linears[m][0] + linears[m][1]) for m in target_modules)
        return per_block * self.num_hidden_layers
