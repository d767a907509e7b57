"""A real endpoint (supervisor, gateway, the model server on a tiny model): its instance's
port answers only the gateway. A local process that finds the port gets 401 without the
instance key, which no other user can see (it is not on the command line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from chattune.cli.main import main
from chattune.models.card import builtin_cards
from chattune.models.store import add_version
from chattune.serving import deployments as D
from chattune.serving import service
from chattune.serving.keys import INSTANCE_KEY_ENV
from tests.serving.control.supervised import REAL_PROBES, kill_all

pytestmark = pytest.mark.integration
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SCORE = {"input_data": {"input_string": [{"role": "user", "content": "hi"}]}}


def post(url: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url, json=body, headers=headers, timeout=60, trust_env=False)


def environ_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def test_instance_port_answers_only_the_gateway(workspace, tiny_llama_dir, tmp_path, capsys):
    ws = workspace
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    model_dir = tmp_path / "tiny"  # its path names this test: `kill_all` finds the instance
    shutil.copytree(tiny_llama_dir, model_dir)
    mv = add_version(ws, name="tiny", kind="registered", card=card, path=model_dir, source="test")
    settings = D.validate_settings(
        {
            "liveness_probe": REAL_PROBES["liveness"],
            "readiness_probe": REAL_PROBES["readiness"],
            "request_timeout_ms": 60000,
        }
    )
    try:
        ep = service.create_endpoint(ws, "door-ep")
        service.create_deployment(ws, "door-ep", "blue", f"tiny:{mv.version}", settings)
        service.update_traffic(ws, "door-ep", {"blue": 100})
        assert main(["endpoint", "get-keys", "door-ep", "--json"]) == 0
        endpoint_key = json.loads(capsys.readouterr().out)["primary_key"]
        (instance,) = D.get_deployment(ws, "door-ep", "blue").instances
        direct = f"http://127.0.0.1:{instance.port}"
        gateway = f"http://127.0.0.1:{ep.port}"

        # through the gateway with the endpoint key: answered
        assert post(f"{gateway}/v1/chat/completions", CHAT, endpoint_key).status_code == 200
        assert post(f"{gateway}/score", SCORE, endpoint_key).status_code == 200
        # straight to the instance: refused without its key, and the endpoint key is not it
        for key in (None, endpoint_key, "guess"):
            for path, body in (("/v1/chat/completions", CHAT), ("/score", SCORE)):
                r = post(direct + path, body, key)
                assert r.status_code == 401, (path, key, r.text)
                assert "answers only its endpoint's gateway" in r.json()["error"]["message"]
        # the supervisor's probes stay open
        assert httpx.get(f"{direct}/ready", trust_env=False).status_code == 200

        # the key travels in the environment (owner-only), never on the command line
        cmdline = Path(f"/proc/{instance.pid}/cmdline").read_bytes().decode()
        instance_key = environ_of(instance.pid)[INSTANCE_KEY_ENV]
        assert len(instance_key) >= 40 and instance_key not in cmdline
        assert post(f"{direct}/v1/chat/completions", CHAT, instance_key).status_code == 200
    finally:
        kill_all(str(tmp_path))
