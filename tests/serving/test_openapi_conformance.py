"""The OpenAPI documents say what the servers do. schemathesis reads the gateway's and the
model server's documents and sends what they allow and what they do not (the documents'
examples, the coverage phase's boundary and invalid values, and 25 fuzzed per operation;
deterministic) to the real servers (a model server subprocess and a gateway in front of it,
on free ports, stopped at the end): about 1,000 requests, 100 s on a busy 2-core host.
Every answer is checked: no 5xx; status codes, content types, headers and bodies as
documented; invalid input refused; valid input accepted (see `valid_data_is_accepted` for
the one refusal a JSON schema cannot predict).

`pytest -s` prints the cases sent and their status classes per server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from chattune.serving.gateway.app import create_gateway
from chattune.serving.gateway.auth import key_digest
from chattune.serving.gateway.config import DeploymentTarget, GatewayConfig
from chattune.serving.keys import bearer
from chattune.serving.model_server.app import create_app
from tests.serving.conftest import ServerProc, start_model_server
from tests.serving.gateway.harness import PRIMARY, Served

schemathesis = pytest.importorskip("schemathesis")  # the `dev` extra
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {PRIMARY}"}
EXAMPLES_PER_OPERATION = 25
# A JSON schema cannot say how many tokens a text is: these refusals depend on the model (a
# prompt or a token budget over its context, messages its chat template rejects), or on
# another field (`top_logprobs` needs `logprobs: true`, as OpenAI has it); each 400 names
# its field in the envelope's `param`.
MODEL_DEPENDENT = {
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "top_logprobs",
    "input_data.input_string",
    "input_data.parameters.max_new_tokens",
    "input_data.parameters.max_gen_len",
}
SEEN: Counter[tuple[str, str]] = Counter()  # (server, "2xx" | "4xx" | "5xx") -> cases


@dataclass
class Stack:
    model_server: ServerProc
    gateway: Served


@pytest.fixture(scope="module")
def stack(chatty_llama_dir, tmp_path_factory) -> Iterator[Stack]:
    log = tmp_path_factory.mktemp("conformance") / "model_server.log"
    server = start_model_server(chatty_llama_dir, log, "--torch-threads", "1")
    gateway: Served | None = None
    try:
        server.wait_ready()
        target = DeploymentTarget(
            "tiny", instances=(server.url,), state="ready", request_timeout_ms=60_000,
            max_concurrent_requests_per_instance=4, instance_key=server.key,
        )  # fmt: skip
        config = GatewayConfig(
            "ep", key_digests=(key_digest(PRIMARY),), traffic={"tiny": 100},
            deployments={"tiny": target},
        )  # fmt: skip
        gateway = Served(create_gateway(config))
        yield Stack(server, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
        print(f"\nschemathesis cases by server and status class: {dict(sorted(SEEN.items()))}")


def valid_data_is_accepted(ctx: Any, response: Any, case: Any) -> None:
    """schemathesis's `positive_data_acceptance`, knowing what a JSON schema cannot say: a
    request the document allows is answered, or refused only for an unknown name (404: a
    `model` or deployment header the endpoint does not have) or a `MODEL_DEPENDENT` field."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    if response.status_code in (401, 404):
        return
    error = response.json().get("error") or {}
    if response.status_code == 400 and (error.get("param") or "").split("[")[0] in MODEL_DEPENDENT:
        return
    raise AssertionError(
        f"a request the document allows was refused: {response.status_code} {response.text}"
    )


# The documents as the servers build them (no server needed); `test_the_documents_are_served`
# checks that the running servers serve these.
GATEWAY_DOC = create_gateway(GatewayConfig("ep")).app.openapi()
MODEL_SERVER_DOC = create_app(served_name="tiny").openapi()
GATEWAY = schemathesis.openapi.from_dict(GATEWAY_DOC)
MODEL_SERVER = schemathesis.openapi.from_dict(MODEL_SERVER_DOC)
for _schema in (GATEWAY, MODEL_SERVER):
    _schema.config.generation.update(
        max_examples=EXAMPLES_PER_OPERATION, deterministic=True, database="none"
    )


def _call_and_validate(case: Any, url: str, server: str, headers: dict[str, str]) -> None:
    def count(ctx: Any, response: Any, case: Any) -> None:
        SEEN[(server, f"{response.status_code // 100}xx")] += 1

    # the key as the caller's own header: the auth checks send without it too
    case.call_and_validate(
        base_url=url,
        headers=headers,
        timeout=60,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_is_accepted, count],
    )


def test_the_documents_are_served(stack: Stack) -> None:
    gateway = httpx.get(f"{stack.gateway.url}/openapi.json", headers=AUTH).json()
    assert gateway["paths"] == GATEWAY_DOC["paths"]
    assert gateway["components"] == GATEWAY_DOC["components"]
    assert stack.model_server.client.get("/openapi.json").json() == MODEL_SERVER_DOC


@GATEWAY.parametrize()
def test_the_gateway_does_what_its_document_says(case: Any, stack: Stack) -> None:
    _call_and_validate(case, stack.gateway.url, "gateway", AUTH)


@MODEL_SERVER.parametrize()
def test_the_model_server_does_what_its_document_says(case: Any, stack: Stack) -> None:
    # the instance key, as the gateway sends it (the model server's own door)
    ms = stack.model_server
    _call_and_validate(case, ms.url, "model server", {"Authorization": bearer(ms.key)})
