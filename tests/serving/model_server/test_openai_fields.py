"""OpenAI's request fields on the model server (a real subprocess, the `openai` package):
`logprobs` and `top_logprobs` are answered, what the server cannot honour is a 400 naming
the field, and bodies too deep for a parser are a 400 naming the limit, never a 500."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from chattune.serving.model_server.chat import ChatPrompter
from tests.serving.model_server.conftest import CONV

pytestmark = pytest.mark.integration

QUESTION = CONV[:2]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)


@pytest.fixture(scope="module")
def first_logprobs(chatty_llama_dir) -> torch.Tensor:
    """The log probabilities of the answer's first token, from transformers alone (fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chatty_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(chatty_llama_dir).eval()
    ids = ChatPrompter(tok).encode(QUESTION)
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)


def test_logprobs_and_top_logprobs_plain_and_streamed(client, chatty_llama_dir, first_logprobs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chatty_llama_dir)
    ask = {"model": "tiny", "messages": QUESTION, "temperature": 0, "max_tokens": 10}
    resp = client.chat.completions.create(**ask, logprobs=True, top_logprobs=3)
    choice = resp.choices[0]
    content = choice.logprobs.content
    ended_by_eos = choice.finish_reason == "stop"  # the end-of-turn token is not content
    assert len(content) == resp.usage.completion_tokens - ended_by_eos >= 1
    best = first_logprobs.topk(3)
    first = content[0]
    assert [t.token for t in first.top_logprobs] == [tok.decode([i]) for i in best.indices]
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True) and all(lp <= 0 for lp in tops)
        # greedy: the chosen token is the most likely one
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, tops[0])
        assert math.exp(entry.logprob) <= 1

    chunks = list(client.chat.completions.create(**ask, logprobs=True, top_logprobs=3,
                                                 stream=True))  # fmt: skip
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]  # fmt: skip
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content

    plain = client.chat.completions.create(**ask, logprobs=True).choices[0].logprobs.content
    assert [e.logprob for e in plain] == [e.logprob for e in content]
    assert all(e.top_logprobs == [] for e in plain)
    assert client.chat.completions.create(**ask).choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true, as OpenAI refuses it
    ],
)
def test_what_chat_cannot_honour_is_400_naming_it(client, extra, field):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2, **extra)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == field, error
    assert field in error["message"]


def test_what_asks_for_nothing_is_answered(client):
    resp = client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=2, tools=[], tool_choice="none",
        response_format={"type": "text"},
    )  # fmt: skip
    assert resp.usage.completion_tokens >= 1


def test_unknown_score_parameters_are_400(server):
    body = {"input_data": {"input_string": QUESTION, "parameters": {"top_k": 5}}}
    r = server.client.post("/score", json=body, timeout=30)
    assert r.status_code == 400 and "'top_k'" in r.json()["error"]["message"], r.text
    body = {"input_data": {"input_string": QUESTION}, "params": {"max_new_tokens": 5}}
    r = server.client.post("/score", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "params", r.text


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("path", ["/score", "/v1/chat/completions"])
def test_deep_bodies_are_400_naming_the_limit(server, path, depth):
    deep = ('{"input_data": ' + "[" * depth + "]" * depth + "}").encode()
    with httpx.Client(
        base_url=server.url, timeout=30, headers=server.client.headers
    ) as http:  # one kept-alive connection
        r = http.post(path, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert "the limit is 64" in r.json()["error"]["message"]
        after = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 2})
        assert after.status_code == 200, after.text


def test_a_tiny_temperature_samples_the_most_likely_token(client):
    # logits / 1e-300 overflowed to inf - inf = NaN in the softmax: a 500
    ask = {"model": "tiny", "messages": QUESTION, "max_tokens": 6, "seed": 1}
    tiny = client.chat.completions.create(**ask, temperature=1e-300).choices[0].message
    greedy = client.chat.completions.create(**ask, temperature=0).choices[0].message
    assert tiny.content == greedy.content


def test_an_adapter_answers_with_its_own_name(server):
    body = {"messages": QUESTION, "max_tokens": 2}
    r = server.client.post("/v1/chat/completions", json=body, timeout=30,
                   headers={"x-chattune-adapter": "a1"})  # fmt: skip
    assert r.status_code == 200 and r.json()["model"] == "a1"
    r = server.client.post("/v1/chat/completions", json=body, timeout=30)
    assert r.json()["model"] == "tiny"
