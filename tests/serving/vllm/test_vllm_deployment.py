"""A deployment on the real vLLM (CPU build) behind chattune's gateway, black box: the seed's
`/score`, OpenAI's client (streamed, with usage), keys, the instance port closed without the
internal key, `deployment show`, and parity with chattune: vLLM's `/tokenize` of a
conversation against the training encoder's tokens, and greedy replies against the built-in
engine's (fp32, so rounding cannot explain a difference).

vLLM starts once for the module (tens of seconds on a busy CPU), beside one built-in
deployment of the same model on the same endpoint."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from chattune.cli.main import main
from chattune.models.card import builtin_cards
from chattune.models.loading import load_tokenizer
from chattune.models.store import add_version
from chattune.serving import endpoints as E
from chattune.serving import service
from chattune.serving.control.lifecycle import log_path
from chattune.serving.deployments import get_deployment, validate_settings
from chattune.serving.headers import DEPLOYMENT_HEADER
from chattune.train.chat_encoder import ChatEncoder
from chattune.workspace import Workspace
from tests.evaluate.test_step import CONVERSATIONS  # sentences the tiny tokenizer knows
from tests.serving.control.supervised import kill_all, wait_for

pytestmark = pytest.mark.integration

# vLLM listens only once its model is loaded (about a minute on a busy 2-core host): liveness
# waits for that; readiness is probed often so the deployment joins at once.
PROBES = {
    "liveness_probe": {"initial_delay": 240, "period": 2, "timeout": 2, "failure_threshold": 3},
    "readiness_probe": {"initial_delay": 0, "period": 0.5, "timeout": 2},
}


@dataclass
class Served:
    ws: Workspace
    endpoint: E.Endpoint
    key: str
    model_dir: Path

    def post(
        self, path: str, body: dict, deployment: str = "dep-vllm", **headers: str
    ) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.endpoint.port}{path}",
            json=body,
            headers={
                "Authorization": f"Bearer {self.key}",
                DEPLOYMENT_HEADER: deployment,
                **headers,
            },
            timeout=120,
            trust_env=False,
        )

    def score_by_traffic(self, n: int) -> Iterator[httpx.Response]:
        """`n` short `/score` requests routed by the endpoint's traffic (no deployment header)."""
        body = {"input_data": {"input_string": CONVERSATIONS[0],
                               "parameters": {"max_new_tokens": 4}}}  # fmt: skip
        for _ in range(n):
            yield httpx.post(
                self.endpoint.scoring_uri, json=body, timeout=60, trust_env=False,
                headers={"Authorization": f"Bearer {self.key}"},
            )  # fmt: skip

    def instance_url(self, deployment: str = "dep-vllm") -> str:
        [inst] = get_deployment(self.ws, self.endpoint.name, deployment).instances
        return f"http://127.0.0.1:{inst.port}"


@pytest.fixture(scope="module")
def served(
    vllm_env_dir: Path, vllm_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("vllm-serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHATTUNE_HOME", str(root / "ws"))
        mp.setenv("CHATTUNE_VLLM", str(vllm_env_dir))
        mp.setenv("CHATTUNE_SERVING_DTYPE", "float32")  # both engines; parity without rounding
        ws = Workspace.open(root / "ws")
        card = builtin_cards()["SmolLM2-135M-Instruct"]
        mv = add_version(ws, name="tinyv", kind="registered", card=card, path=vllm_llama_dir,
                         source="test")  # fmt: skip
        try:
            ep = service.create_endpoint(ws, "vllm-ep")
            settings = validate_settings({**PROBES, "request_timeout_ms": 120_000})
            for name, engine in (("dep-vllm", "vllm"), ("dep-builtin", "builtin")):
                service.create_deployment(
                    ws, ep.name, name, f"{mv.name}:{mv.version}",
                    settings.model_copy(update={"engine": engine}), timeout_s=600,
                )  # fmt: skip
            service.update_traffic(ws, ep.name, {"dep-vllm": 100})
            yield Served(ws, ep, E.get_keys(ws, ep.name).primary_key, vllm_llama_dir)
        except Exception:
            with contextlib.suppress(OSError):
                print(Path(log_path(ws, "vllm-ep")).read_text()[-3000:])
                print(
                    (E.endpoint_dir(ws, "vllm-ep") / "dep-vllm" / "instance-0.log").read_text()[
                        -6000:
                    ]
                )
            raise
        finally:
            with contextlib.suppress(Exception):
                service.delete_endpoint(ws, "vllm-ep")
            kill_all(str(root))


def test_score_with_the_seed_body(served: Served) -> None:
    conv = CONVERSATIONS[0]
    params = {"temperature": 0.6, "top_p": 0.9, "do_sample": False, "max_new_tokens": 8}
    one = served.post("/score", {"input_data": {"input_string": [conv], "parameters": params}})
    assert one.status_code == 200, one.text
    assert one.headers[DEPLOYMENT_HEADER] == "dep-vllm"
    assert isinstance(one.json()["output"], str) and one.json()["output"]
    two = served.post("/score", {"input_data": {"input_string": [conv, CONVERSATIONS[1]]}})
    assert two.status_code == 200, two.text
    assert len(two.json()["output"]) == 2
    bad = served.post("/score", {"input_data": {"input_string": "hi"}})
    assert bad.status_code == 400 and "input_string" in bad.json()["error"]["message"]


def test_openai_client_streams_with_usage(served: Served) -> None:
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{served.endpoint.port}/v1",
        api_key=served.key,
        http_client=httpx.Client(trust_env=False),
    )
    whole = client.chat.completions.create(
        model="dep-vllm", messages=CONVERSATIONS[0], max_tokens=8, temperature=0
    )
    assert whole.choices[0].message.content and whole.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(
            model="dep-vllm", messages=CONVERSATIONS[0], max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same reply
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    denied = openai.OpenAI(
        base_url=f"http://127.0.0.1:{served.endpoint.port}/v1", api_key="wrong",
        http_client=httpx.Client(trust_env=False), max_retries=0,
    )  # fmt: skip
    with pytest.raises(openai.AuthenticationError):
        denied.chat.completions.create(model="dep-vllm", messages=CONVERSATIONS[0], max_tokens=4)


def test_instance_port_refuses_requests_without_the_internal_key(served: Served) -> None:
    url = served.instance_url() + "/v1/chat/completions"
    body = {"model": "dep-vllm", "messages": CONVERSATIONS[0], "max_tokens": 4}
    bare = httpx.post(url, json=body, timeout=30, trust_env=False)
    assert bare.status_code == 401
    with_endpoint_key = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {served.key}"}, timeout=30,
        trust_env=False,
    )  # fmt: skip
    assert with_endpoint_key.status_code == 401
    listening = os.popen(f"ss -ltnH 'sport = :{url.split(':')[2].split('/')[0]}'").read()
    assert "127.0.0.1:" in listening  # loopback only


def test_deployment_show_says_which_engine_and_why(served: Served, capsys) -> None:
    code = main(["deployment", "show", "-e", "vllm-ep", "-n", "dep-vllm",
                 "--workspace", str(served.ws.root)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "vllm (asked for (vLLM 0." in out
    code = main(["deployment", "show", "-e", "vllm-ep", "-n", "dep-builtin",
                 "--workspace", str(served.ws.root)])  # fmt: skip
    assert "builtin (asked for (--engine builtin))" in capsys.readouterr().out
    log = (E.endpoint_dir(served.ws, "vllm-ep") / "dep-vllm" / "instance-0.log").read_text()
    assert "vllm.entrypoints" in log or "vLLM" in log  # vLLM's own log, in the instance log


def test_vllm_tokenizes_a_conversation_as_the_training_encoder(served: Served) -> None:
    encoder = ChatEncoder(load_tokenizer(served.model_dir))
    for conv in CONVERSATIONS:
        answer = httpx.post(
            served.instance_url() + "/tokenize",
            json={"model": "dep-vllm", "messages": conv, "add_generation_prompt": False},
            timeout=30, trust_env=False,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        [encoded] = encoder.encode([conv])
        assert answer.json()["tokens"] == encoded.input_ids


def test_greedy_replies_agree_with_the_builtin_engine_in_fp32(served: Served) -> None:
    """Same prompt tokens, same number of reply tokens, same text. The tiny model's replies
    are random byte-level tokens, often ending inside a UTF-8 character: chattune decodes
    such a tail as U+FFFD, vLLM's incremental detokenizer leaves it out, so the text is
    compared without trailing U+FFFD."""
    for conv in CONVERSATIONS:
        answers = {}
        for deployment in ("dep-vllm", "dep-builtin"):
            body = {"model": deployment, "messages": conv, "max_tokens": 12, "temperature": 0}
            answer = served.post("/v1/chat/completions", body, deployment=deployment)
            assert answer.status_code == 200, answer.text
            answers[deployment] = answer.json()
        vllm, builtin = answers["dep-vllm"], answers["dep-builtin"]
        for field in ("prompt_tokens", "completion_tokens"):
            assert vllm["usage"][field] == builtin["usage"][field], (field, conv)
        texts = [a["choices"][0]["message"]["content"].rstrip("\ufffd") for a in (vllm, builtin)]
        assert texts[0] == texts[1], conv


def test_models_traffic_split_and_limits_hold_on_both_engines(served: Served) -> None:
    """The gateway's own promises do not depend on the engine behind it."""
    models = httpx.get(
        f"http://127.0.0.1:{served.endpoint.port}/v1/models",
        headers={"Authorization": f"Bearer {served.key}"}, timeout=30, trust_env=False,
    )  # fmt: skip
    assert {"dep-vllm", "dep-builtin"} <= {m["id"] for m in models.json()["data"]}
    service.update_traffic(served.ws, "vllm-ep", {"dep-vllm": 50, "dep-builtin": 50})
    try:
        seen = {}
        for answer in served.score_by_traffic(30):  # 2**-29 that one side gets none
            assert answer.status_code == 200, answer.text
            seen.setdefault(answer.headers[DEPLOYMENT_HEADER], []).append(answer.json())
        assert set(seen) == {"dep-vllm", "dep-builtin"}
        for answers in seen.values():  # the same /score shape from either engine
            assert all(set(a) == {"output"} and isinstance(a["output"], str) for a in answers)
    finally:
        service.update_traffic(served.ws, "vllm-ep", {"dep-vllm": 100})
    huge = served.post("/score", {"input_data": {"input_string": [
        {"role": "user", "content": "x" * 2_000_000}]}})  # fmt: skip
    assert huge.status_code == 413


def test_mirror_copies_of_score_reach_vllm_as_chat_completions(served: Served) -> None:
    """Live traffic on the built-in engine, a 50% shadow copy to vLLM: the copy of a `/score`
    is translated like a live one (vLLM's access log shows the chat completions)."""
    log = E.endpoint_dir(served.ws, "vllm-ep") / "dep-vllm" / "instance-0.log"

    def chats() -> int:
        return log.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')

    before = chats()
    service.update_traffic(served.ws, "vllm-ep", {"dep-builtin": 100}, {"dep-vllm": 50})
    try:
        for answer in served.score_by_traffic(20):  # 2**-20 that no copy is sent
            assert answer.status_code == 200 and answer.headers[DEPLOYMENT_HEADER] == "dep-builtin"
        wait_for(lambda: chats() > before, 60, "a mirrored /score answered by vLLM")
    finally:
        service.update_traffic(served.ws, "vllm-ep", {"dep-vllm": 100}, {})


def descendants(pid: int) -> set[int]:
    """The processes under `pid` (vLLM's engine core and workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().split(") ")[1].split()[1]
                )
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "stat").read_text().split(") ")[1][0] != "Z"
    return False


def test_a_killed_vllm_instance_is_restarted_and_leaves_nothing_behind(served: Served) -> None:
    """Runs last: it restarts vLLM (tens of seconds)."""
    [inst] = get_deployment(served.ws, "vllm-ep", "dep-vllm").instances
    children = descendants(inst.pid)
    assert children, "vLLM runs its engine core in a child process"
    os.kill(inst.pid, signal.SIGKILL)
    down = served.post("/score", {"input_data": {"input_string": CONVERSATIONS[0]}})
    assert down.status_code in (424, 503), down.text  # its instance is gone, never a hang

    def restarted() -> object:
        [now] = get_deployment(served.ws, "vllm-ep", "dep-vllm").instances
        return now.pid != inst.pid and now.state == "ready" and now

    now = wait_for(restarted, timeout_s=300, what="vLLM restarted and ready")
    assert now.restarts == 1
    assert not [pid for pid in children if alive(pid)], "vLLM's engine core outlived its server"
    again = served.post("/score", {"input_data": {"input_string": CONVERSATIONS[0]}})
    assert again.status_code == 200, again.text


def test_vllm_ends_with_its_supervisor(served: Served) -> None:
    """Runs last: it kills the endpoint's supervisor (SIGKILL: no clean shutdown)."""
    [inst] = get_deployment(served.ws, "vllm-ep", "dep-vllm").instances
    processes = {inst.pid, *descendants(inst.pid)}
    supervisor = E.get_endpoint(served.ws, "vllm-ep").pid
    assert supervisor and inst.pid
    os.kill(supervisor, signal.SIGKILL)
    wait_for(
        lambda: not [pid for pid in processes if alive(pid)],
        timeout_s=120,
        what="vLLM's server, engine core and workers to end with the supervisor",
    )
