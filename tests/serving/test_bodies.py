"""Request bodies: the depth limit, and the fields both servers refuse instead of ignoring
(`serving/bodies.py` with the wire models of `model_server/schemas.py`)."""

from __future__ import annotations

import json

import pytest

from chattune.errors import InvalidRequest
from chattune.serving.bodies import MAX_DEPTH, nesting_depth, parse_body
from chattune.serving.model_server.schemas import ChatCompletionRequest, ScoreRequest

HI = [{"role": "user", "content": "hi"}]


def deep(depth: int) -> bytes:
    """A chat body whose `messages` nests `depth` levels in all."""
    inner = "[" * (depth - 1) + "]" * (depth - 1)
    return ('{"messages": ' + inner + "}").encode()


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("", 0),
        ("5", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}], "c": {}}', 4),
        ('{"s": "[[[[{{{{\\"]]"}', 1),  # brackets and escaped quotes inside strings
        ('[{"a": [{"b": [{}]}]}]', 6),  # arrays and objects alternating, each level once
        ("[" * 5000, 5000),  # a body that only opens is as deep as it opens
        ('{"messages": [', 2),  # shallow and invalid: the parser's message, not the limit
    ],
)
def test_nesting_depth_counts_levels_outside_strings(text: str, depth: int) -> None:
    assert nesting_depth(text.encode()) == depth


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_bodies_are_refused_naming_the_limit(depth: int) -> None:
    # Python's json module raised RecursionError (a 500) near 1,000 levels
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ChatCompletionRequest, deep(depth))
    assert f"{depth} levels deep; the limit is {MAX_DEPTH}" in str(caught.value)
    assert caught.value.param == "body"


def test_the_limit_itself_is_accepted() -> None:
    body = {"messages": HI, "x": json.loads("[" * 63 + "]" * 63)}
    assert nesting_depth(json.dumps(body).encode()) == MAX_DEPTH
    assert parse_body(ChatCompletionRequest, json.dumps(body).encode()).messages


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format", "plain text"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "plain text"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "tools"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"n": 2}, "n", "n=2 is not supported"),
        ({"top_logprobs": 21}, "top_logprobs", "20"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "1"),
        ({"temperature": -0.5}, "temperature", "0"),
        ({"seed": 2**64}, "seed", "seed"),
    ],
)
def test_what_chat_cannot_honour_is_refused_naming_the_field(extra, field, words) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ChatCompletionRequest, json.dumps({"messages": HI, **extra}).encode())
    message = str(caught.value)
    assert caught.value.param == field and f"`{field}`" in message and words in message
    assert "GET /openapi.json" in message and "/docs" not in message


@pytest.mark.parametrize(
    "extra",
    [
        {"response_format": {"type": "text"}},
        {"tools": []},
        {"tool_choice": "none"},
        {"tool_choice": "auto"},
        {"max_completion_tokens": None, "max_tokens": None, "seed": None},  # as OpenAI allows
        {"logprobs": True, "top_logprobs": 20},
    ],
)
def test_what_asks_for_nothing_is_accepted(extra) -> None:
    parse_body(ChatCompletionRequest, json.dumps({"messages": HI, **extra}).encode())


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"input_string": HI, "parameters": {"top_k": 5}}, "input_data.parameters", "'top_k'"),
        ({"input_string": HI, "parameters": {"max_gen_len": None, "x": 1}}, "parameters", "'x'"),
        ({"input_string": []}, "input_data.input_string", "empty"),
    ],
)
def test_what_score_cannot_honour_is_refused_naming_it(body, field, words) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ScoreRequest, json.dumps({"input_data": body}).encode())
    assert field in str(caught.value) and words in str(caught.value)


def test_score_params_must_be_empty() -> None:
    body = {"input_data": {"input_string": [HI]}, "params": {}}
    assert parse_body(ScoreRequest, json.dumps(body).encode()).params == {}
    with pytest.raises(InvalidRequest) as caught:
        parse_body(ScoreRequest, json.dumps({**body, "params": {"temperature": 1}}).encode())
    assert caught.value.param == "params" and "input_data.parameters" in str(caught.value)


def test_whole_numbers_written_as_floats_are_integers() -> None:
    # JSON Schema's integer (what the documents say) includes 14.0; 1.5 and "14" are not one
    body = {"messages": HI, "seed": 11221985245.0, "top_logprobs": 14.0, "logprobs": True}
    request = parse_body(ChatCompletionRequest, json.dumps(body).encode())
    assert (request.seed, request.top_logprobs) == (11221985245, 14)
    for bad in (1.5, "14", 1e300):
        with pytest.raises(InvalidRequest, match="`seed`"):
            parse_body(ChatCompletionRequest, json.dumps({"messages": HI, "seed": bad}).encode())


def test_the_documents_use_json_schema_words() -> None:
    # pydantic writes a bound it cannot translate under its own name (`ge`), which JSON
    # Schema ignores: the document would then allow what the server refuses
    def keys(node: object) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return {k for v in node for k in keys(v)} if isinstance(node, list) else set()

    for model in (ChatCompletionRequest, ScoreRequest):
        assert not keys(model.model_json_schema()) & {"ge", "gt", "le", "lt"}


def test_not_json_is_named_as_such() -> None:
    for raw in (b"", b'{"messages": [', b"nope"):
        with pytest.raises(InvalidRequest, match="not valid JSON"):
            parse_body(ChatCompletionRequest, raw)
