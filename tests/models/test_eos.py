"""The one stop rule: config eos, tokenizer eos and the chat template's end-of-turn token."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from chattune.models.eos import end_of_turn_ids, stop_token_ids


class _Model:
    def __init__(self, folder: Path) -> None:
        self.config = AutoConfig.from_pretrained(folder)
        self.generation_config = None


def test_phi3_stops_at_its_end_of_turn_token_the_config_does_not_name(tiny_phi3_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_phi3_dir)
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end_of_turn_ids(tok) == [end]
    ids = stop_token_ids(_Model(tiny_phi3_dir), tok)
    assert ids == sorted({end, tok.eos_token_id})  # <|end|> and <|endoftext|>


def test_chatml_end_of_turn_is_im_end(tiny_llama_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]


def test_a_tokenizer_without_a_template_has_no_end_of_turn(tiny_llama_dir) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    assert end_of_turn_ids(tok) == []
    assert stop_token_ids(_Model(tiny_llama_dir), tok) == [tok.eos_token_id]
