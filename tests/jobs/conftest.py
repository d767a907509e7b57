from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

PAIRS = [
    ("Hello, how are you doing today?", "I am fine, thank you. What about you?"),
    ("What is the capital of France?", "Paris is the capital of France."),
    (
        "Can you tell me a joke about computers?",
        "Why did the programmer quit his job? Because he did not get arrays.",
    ),
    ("How is the weather?", "The weather is nice and sunny in the park."),
    (
        "What does fine-tuning need?",
        "Fine-tuning a chat model needs data, a base model and patience.",
    ),
]


def write_chats(path: Path, n: int, seed: int = 0, turns: int = 1) -> Path:
    """`n` conversations in the ultrachat schema, built from the tiny tokenizer's corpus."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            messages = []
            for _ in range(turns):
                q, a = rng.choice(PAIRS)
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(
                json.dumps(
                    {"prompt": messages[0]["content"], "prompt_id": "x", "messages": messages}
                )
                + "\n"
            )
    return path


@pytest.fixture
def chat_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_chats(tmp_path / "train.jsonl", 48, seed=1, turns=2),
        "test": write_chats(tmp_path / "test.jsonl", 8, seed=2),
    }
