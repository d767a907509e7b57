"""Model cards: what chattune knows of a base model before touching its weights."""

from __future__ import annotations

import time
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from chattune.models.arch import ArchSpec


class Source(BaseModel):
    """Where the weights come from. Tried in the card's order by `chattune model import`.

    kind: `hub` (a Hugging Face Hub repo id), `gguf_package` (a GGUF file inside an
    installed Python package), `local` (a Hugging Face folder), `gguf` (a GGUF file).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["hub", "gguf_package", "local", "gguf"]
    id: str | None = None  # hub repo id
    package: str | None = None  # gguf_package: importable package name
    file: str | None = None  # gguf_package: file name inside it
    path: str | None = None  # local / gguf: filesystem path

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hub:{self.id}"
        if self.kind == "gguf_package":
            return f"gguf_package:{self.package}/{self.file}"
        return f"{self.kind}:{self.path}"


class ModelCard(BaseModel):
    """A base model: its shape, sources, LoRA targets and fine-tuning defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = "1"
    created_at: datetime
    description: str = ""
    license: str = ""
    architecture: str
    config: ArchSpec
    lora_target_modules: list[str]
    chat_template_source: str
    sources: list[Source] = Field(min_length=1)
    # Azure-style: these override the user's pipeline parameters (values are strings).
    model_specific_defaults: dict[str, str] = Field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return self.config.num_parameters()

    @property
    def context_length(self) -> int:
        return self.config.max_position_embeddings

    @property
    def hub_id(self) -> str | None:
        return next((s.id for s in self.sources if s.kind == "hub"), None)

    @classmethod
    def from_hf_config(
        cls, name: str, cfg: dict[str, Any], *, source: Source, origin: str, tokenizer: str
    ) -> ModelCard:
        """The card of a model that has no built-in card, read off its `config.json`.

        Args:
            name: the model's name in the workspace.
            cfg: the parsed `config.json`.
            source: where the weights came from.
            origin: how it came (the description: "imported from ...").
            tokenizer: where its chat template comes from.
        """
        arch = ArchSpec.from_hf_config(cfg)
        return cls(
            name=name,
            created_at=time.time(),  # type: ignore[arg-type]
            description=origin,
            architecture=(cfg.get("architectures") or ["?"])[0],
            config=arch,
            lora_target_modules=list(arch.layer_linears()),
            chat_template_source=f"tokenizer of {tokenizer}",
            sources=[source],
        )

    def summary(self) -> dict[str, Any]:
        """The card as plain data, plus the derived parameter count and context length."""
        data = self.model_dump(mode="json")
        data["num_parameters"] = self.num_parameters
        data["context_length"] = self.context_length
        return data


@cache
def builtin_cards() -> dict[str, ModelCard]:
    """The cards shipped in `chattune/models/cards/*.yaml`, by name."""
    cards: dict[str, ModelCard] = {}
    cards_dir = resources.files("chattune.models").joinpath("cards")
    for entry in sorted(cards_dir.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            card = ModelCard.model_validate(yaml.safe_load(entry.read_text()))
            cards[card.name] = card
    return cards
