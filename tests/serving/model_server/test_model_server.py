"""The model server as a black box: a real subprocess on a free port, real clients (httpx,
the `openai` package)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from chattune.serving.model_server.chat import ChatPrompter
from tests.serving.conftest import ServerProc, start_model_server

pytestmark = pytest.mark.integration

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Can you tell me a joke about computers?"},
    {"role": "assistant", "content": "Why did the programmer quit his job?"},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "Because he did not get arrays."},
]


@pytest.fixture(scope="module")
def server(chatty_llama_dir, llama_adapters, tmp_path_factory) -> ServerProc:
    """One server for the module; `seen` records /ready and /health while it loaded.

    fp32, as the reference: the default (auto) is bf16 on a CPU with bf16 instructions, and
    greedy text in bf16 parts from fp32's after a few tokens."""
    log = tmp_path_factory.mktemp("ms") / "server.log"
    flags = [f"--adapter={n}={p}" for n, p in llama_adapters.items()]
    srv = start_model_server(
        chatty_llama_dir, log, *flags, "--max-batch-size", "16", "--torch-threads", "1",
        "--dtype", "float32",
    )  # fmt: skip
    try:
        srv.seen = []  # type: ignore[attr-defined]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and srv.proc.poll() is None:
            try:
                ready = srv.client.get("/ready", timeout=2).status_code
                health = srv.client.get("/health", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            srv.seen.append((ready, health))  # type: ignore[attr-defined]
            if ready == 200:
                break
            time.sleep(0.05)
        srv.wait_ready(5)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def reference(chatty_llama_dir):
    """Greedy answers computed in this process with transformers alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chatty_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(chatty_llama_dir).eval()
    prompter = ChatPrompter(tok)
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]

    def greedy(messages: list[dict], n: int) -> tuple[str, int, int]:
        ids = prompter.encode(messages)
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos[0])[0, len(ids):]  # fmt: skip
        return tok.decode(out, skip_special_tokens=True), len(ids), len(out)

    return greedy


def _stats(srv: ServerProc) -> dict:
    return srv.client.get("/stats").json()["engine"]


def test_ready_goes_from_503_to_200_while_health_is_200(server):
    assert server.seen[0] == (503, 200)
    assert server.seen[-1] == (200, 200)
    assert server.client.get("/v1/models").json()["data"][0]["id"] == "tiny"


def test_score_answers_the_seeds_request(server, reference):
    question = CONV[:4]
    body = {
        "input_data": {
            "input_string": [CONV],  # the seed sends [test_df["messages"][0]]
            "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True,
                           "max_new_tokens": 100},  # 256-token context
        },
        "params": {},
    }  # fmt: skip
    r = server.client.post("/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["output"], str)

    greedy = {"max_gen_len": 16, "do_sample": False}
    flat = {"input_data": {"input_string": question, "parameters": greedy}}
    r = server.client.post("/score", json=flat, timeout=60)
    assert r.json() == {"output": reference(question, 16)[0]}

    two = {"input_data": {"input_string": [question, CONV[:2]], "parameters": greedy}}
    r = server.client.post("/score", json=two, timeout=60)
    assert r.json() == {"output": [reference(question, 16)[0], reference(CONV[:2], 16)[0]]}


def test_openai_client_plain_and_streaming(server, reference):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    text, n_prompt, n_out = reference(CONV[:2], 12)
    resp = client.chat.completions.create(
        model="tiny", messages=CONV[:2], temperature=0, max_completion_tokens=12
    )
    assert resp.choices[0].message.content == text
    assert resp.choices[0].finish_reason in ("length", "stop")
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (n_prompt, n_out)
    assert resp.usage.total_tokens == n_prompt + n_out

    stream = client.chat.completions.create(
        model="tiny", messages=CONV[:2], temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == text
    assert len([d for d in deltas if d]) > 1  # it really streamed, token by token
    assert chunks[-1].usage.completion_tokens == n_out

    seeded = [
        client.chat.completions.create(model="tiny", messages=CONV[:2], max_tokens=10, seed=5)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"messages": [', "not valid JSON"),
        (b'{"messages": "hi"}', "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "`messages` is empty"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -0.1}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, "context has left"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 250},
         "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "hi " * 300}]}, "context is 256"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n=2"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ],
)  # fmt: skip
def test_bad_chat_requests_are_400_naming_the_field(server, body, field):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = server.client.post("/v1/chat/completions", timeout=30, **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == 400 and field in err["message"], err


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -1}, "input_data.parameters.temperature"),
        ({"top_p": 0}, "input_data.parameters.top_p"),
        ({"max_new_tokens": 0}, "input_data.parameters.max_new_tokens"),
        ({"max_gen_len": 9999}, "input_data.parameters.max_gen_len"),
        ({"do_sample": "yes"}, "do_sample"),
    ],
)
def test_bad_score_requests_are_400(server, params, field):
    body = {"input_data": {"input_string": CONV[:2], "parameters": params}, "params": {}}
    r = server.client.post("/score", json=body, timeout=30)
    assert r.status_code == 400 and field in r.json()["error"]["message"], r.text
    r = server.client.post("/score", json={"input_data": {"input_string": []}}, timeout=30)
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    r = server.client.post("/score", json={"input_string": CONV}, timeout=30)
    assert r.status_code == 400 and "input_data" in r.json()["error"]["message"]


def test_timeout_is_408_and_stops_the_generation(server):
    before = _stats(server)
    body = {"messages": CONV[:2], "max_tokens": 200, "temperature": 0}
    r = server.client.post("/v1/chat/completions", json=body,
                   headers={"x-chattune-timeout-ms": "30"}, timeout=30)  # fmt: skip
    assert r.status_code == 408, r.text
    assert "timed out" in r.json()["error"]["message"]
    for _ in range(50):
        after = _stats(server)
        if after["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.1)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["running"] == 0
    assert after["generated_tokens"] - before["generated_tokens"] < 200
    bad = server.client.post("/v1/chat/completions", json=body,
                     headers={"x-chattune-timeout-ms": "soon"})  # fmt: skip
    assert bad.status_code == 400 and "x-chattune-timeout-ms" in bad.json()["error"]["message"]


def test_client_disconnect_mid_stream_cancels(server):
    before = _stats(server)
    body = {"messages": CONV[:2], "max_tokens": 200, "stream": True}
    with server.client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    for _ in range(50):
        after = _stats(server)
        if after["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.1)
    assert after["cancelled"] == before["cancelled"] + 1


def test_concurrent_requests_are_batched(server, reference):
    before = _stats(server)
    questions = [[{"role": "user", "content": f"Numbers: {i} {i + 1}"}] for i in range(8)]

    def ask(msgs: list[dict]) -> str:
        body = {"messages": msgs, "max_tokens": 24, "temperature": 0}
        r = server.client.post("/v1/chat/completions", json=body, timeout=60)
        return r.json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, questions))
    after = _stats(server)
    assert after["max_batch"] > 1
    assert after["steps"] - before["steps"] < after["generated_tokens"] - before["generated_tokens"]
    assert answers == [reference(q, 24)[0] for q in questions]


def test_adapter_header_routes_to_the_adapter(server, llama_adapters):
    body = {"messages": CONV[:2], "max_tokens": 12, "temperature": 0}
    answers = {}
    for name in ("a1", "a2", "__base__"):
        r = server.client.post("/v1/chat/completions", json=body,
                       headers={"x-chattune-adapter": name}, timeout=30)  # fmt: skip
        answers[name] = r.json()["choices"][0]["message"]["content"]
    assert len(set(answers.values())) == 3
    r = server.client.post("/v1/chat/completions", json=body,
                   headers={"x-chattune-adapter": "zzz"})  # fmt: skip
    assert r.status_code == 400
    assert "'zzz'" in r.json()["error"]["message"] and "a1, a2" in r.json()["error"]["message"]


def test_a_crashing_request_is_a_500_and_the_server_goes_on(chatty_llama_dir, monkeypatch):
    from chattune.serving.model_server.app import create_app
    from chattune.serving.model_server.loading import load_engine

    engine, _ = load_engine(chatty_llama_dir, {}, 4)
    real, calls = engine._forward, {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated kernel failure")
        return real(*a, **kw)

    monkeypatch.setattr(engine, "_forward", flaky)
    app = create_app(engine=engine, served_name="tiny")
    body = {"messages": CONV[:2], "max_tokens": 4}

    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.post("/v1/chat/completions", json=body),
                    await c.post("/v1/chat/completions", json=body))  # fmt: skip

    try:
        bad, good = asyncio.run(go())
    finally:
        engine.stop()
    assert bad.status_code == 500 and "simulated kernel failure" in bad.json()["error"]["message"]
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_phi3_dir"])
def test_serving_prompt_is_the_training_prompt(which, request):
    """The tokens training saw before the last assistant answer = the serving prompt."""
    from transformers import AutoTokenizer

    from chattune.train.preprocess import ChatEncoder

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(which))
    for conv in (CONV, CONV[1:3]):
        enc = ChatEncoder(tok).encode([conv])[0]
        start = enc.label_ranges[-1][0]
        served = ChatPrompter(tok).encode(conv[:-1])
        assert served == enc.input_ids[:start]
        assert enc.labels[start] == enc.input_ids[start]  # the answer starts right there


def test_usage_counts_the_training_prompt(server, chatty_llama_dir):
    from transformers import AutoTokenizer

    from chattune.train.preprocess import ChatEncoder

    enc = ChatEncoder(AutoTokenizer.from_pretrained(chatty_llama_dir)).encode([CONV])[0]
    body = {"messages": CONV[:-1], "max_tokens": 1}
    r = server.client.post("/v1/chat/completions", json=body, timeout=30)
    assert r.json()["usage"]["prompt_tokens"] == enc.label_ranges[-1][0]


def test_exits_when_the_parent_is_gone(chatty_llama_dir, tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    srv = start_model_server(chatty_llama_dir, tmp_path / "s.log", "--parent-pid",
                             str(parent.pid))  # fmt: skip
    try:
        srv.wait_ready()
        parent.kill()
        parent.wait()
        assert srv.proc.wait(30) == 0
    finally:
        parent.kill()
        srv.stop()


def test_a_model_that_cannot_load_ends_the_process_with_the_reason(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "weights.txt").write_text("no")
    srv = start_model_server(junk, tmp_path / "s.log")
    try:
        assert srv.proc.wait(60) == 3
        assert "holds no model" in srv.log().strip().splitlines()[-1] or "holds no model" in (
            srv.log()
        )
    finally:
        srv.stop()


def test_sse_wire_format(server):
    body = {"messages": CONV[:2], "max_tokens": 3, "stream": True}
    with server.client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] in ("length", "stop")


def test_model_dir_path_is_reported(server):
    info = server.client.get("/stats").json()
    assert info["kind"] == "hf" and info["dtype"] == "float32"
    assert sorted(info["adapters"]) == ["a1", "a2"]
    assert Path(info["model_dir"]).is_dir()
    assert info["malloc"] in ("tuned", "unsupported")  # freed memory kept for reuse (glibc)


def test_dtype_auto_follows_the_hardware_and_the_env_sets_bf16(
    chatty_llama_dir, model_server_factory, monkeypatch
):
    """auto is bf16 exactly where the CPU runs bf16 in hardware; $CHATTUNE_SERVING_DTYPE
    (inherited from the supervisor) sets the default, and a bf16 server answers (emulated
    where it must be). The module's server shows that --dtype float32 is taken."""
    from chattune.host.machine import cpu_bf16_supported

    monkeypatch.delenv("CHATTUNE_SERVING_DTYPE", raising=False)
    auto = model_server_factory(chatty_llama_dir, "--torch-threads", "1")
    want = "bfloat16" if cpu_bf16_supported() else "float32"
    assert auto.client.get("/stats").json()["dtype"] == want
    monkeypatch.setenv("CHATTUNE_SERVING_DTYPE", "bfloat16")
    bf = model_server_factory(chatty_llama_dir, "--torch-threads", "1")
    assert bf.client.get("/stats").json()["dtype"] == "bfloat16"
    r = bf.client.post("/v1/chat/completions", timeout=60,
                   json={"messages": CONV[:2], "max_tokens": 4, "temperature": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_unknown_dtype_is_refused_at_the_command_line(chatty_llama_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "chattune.serving.model_server", "--model-dir",
         str(chatty_llama_dir), "--port", "1", "--served-name", "x", "--dtype", "fp8"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--dtype" in proc.stderr and "float32" in proc.stderr
