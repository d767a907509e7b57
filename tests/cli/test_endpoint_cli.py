"""`chattune endpoint ...` / `deployment ...` / `up`: refusals without processes, then the
seed's steps 7-9 end to end with the real model server on a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from chattune.cli.main import main
from chattune.models.card import builtin_cards
from chattune.models.store import add_version
from chattune.serving import deployments as D
from chattune.serving import endpoints as E
from chattune.serving.control.instances import port_free
from tests.serving.control.supervised import REAL_FLAGS, kill_all, processes_under, wait_for

SEED_REQUEST = {
    "input_data": {
        "input_string": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": False, "max_new_tokens": 4},
    }
}


def run(capsys: pytest.CaptureFixture[str], ws, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--workspace", str(ws.root)])
    out, err = capsys.readouterr()
    return code, out, err


def register(ws, src: Path, dst: Path, name: str = "tiny") -> str:
    shutil.copytree(src, dst)
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    mv = add_version(ws, name=name, kind="registered", card=card, path=dst, source="test")
    return f"{mv.name}:{mv.version}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["endpoint", "create", "a_b"], "3-32 characters"),
        (["endpoint", "create", "ab"], "3-32 characters"),
        (["endpoint", "create", "good-name", "--auth-mode", "aml_token"], "not supported"),
        (["endpoint", "show", "nope"], "no endpoint named 'nope'"),
        (["endpoint", "update", "nope", "--traffic", "a=100"], "no endpoint named 'nope'"),
        (["deployment", "show", "-e", "nope", "-n", "blue"], "no endpoint named 'nope'"),
    ],
)
def test_refusals(workspace, capsys, args: list[str], needle: str) -> None:
    code, _, err = run(capsys, workspace, *args)
    assert code == 2 and needle in err
    assert E.list_endpoints(workspace) == []  # nothing was half-created


def test_traffic_and_model_refusals(workspace, capsys) -> None:
    E.create_endpoint(workspace, "stopped-ep", port=1)
    D.create_deployment(
        workspace,
        "stopped-ep",
        "blue",
        model_name="m",
        model_version="1",
        settings=D.DeploymentSettings(),
    )
    code, _, err = run(
        capsys, workspace, "endpoint", "update", "stopped-ep", "--traffic", "blue=90"
    )
    assert code == 2 and "sum to 90" in err
    code, _, err = run(
        capsys,
        workspace,
        "endpoint",
        "update",
        "stopped-ep",
        "--traffic",
        "blue=100",
        "--mirror-traffic",
        "blue=10",
    )
    assert code == 2 and "live and mirror traffic" in err
    # a stopped endpoint keeps the change for `chattune up`
    code, out, _ = run(
        capsys, workspace, "endpoint", "update", "stopped-ep", "--traffic", "blue=100"
    )
    assert code == 0 and "chattune up" in out
    assert E.get_endpoint(workspace, "stopped-ep").traffic == {"blue": 100}
    for model, needle in (("tiny", "names no version"), ("nope:1", "no model named 'nope'")):
        code, _, err = run(
            capsys,
            workspace,
            "deployment",
            "create",
            "-e",
            "stopped-ep",
            "-n",
            "green",
            "--model",
            model,
        )
        assert code == 2 and needle in err, err
    code, _, err = run(capsys, workspace, "deployment", "delete", "-e", "stopped-ep", "-n", "blue")
    assert code == 2 and "set its traffic to 0 first" in err


@pytest.mark.integration
def test_create_deploy_invoke_delete(workspace, capsys, tiny_llama_dir, tmp_path) -> None:
    ws = workspace
    model = register(ws, tiny_llama_dir, tmp_path / "tiny")
    request = tmp_path / "sample_score.json"
    request.write_text(json.dumps(SEED_REQUEST))
    try:
        code, out, err = run(capsys, ws, "endpoint", "create", "demo-ep", "--tag", "team=x")
        assert code == 0, err
        code, out, err = run(
            capsys,
            ws,
            "deployment",
            "create",
            "--endpoint",
            "demo-ep",
            "--name",
            "demo",
            "--model",
            model,
            "--request-timeout-ms",
            "60000",
            *REAL_FLAGS,
        )
        assert code == 0, err
        assert "deployment demo is ready" in out
        code, out, err = run(
            capsys, ws, "endpoint", "invoke", "demo-ep", "--request-file", str(request)
        )
        assert code == 1 and '"code":404' in out.replace(" ", "")  # 0% traffic: not served
        code, _, err = run(capsys, ws, "endpoint", "update", "demo-ep", "--traffic", "demo=100")
        assert code == 0, err
        code, out, err = run(
            capsys, ws, "endpoint", "invoke", "demo-ep", "--request-file", str(request)
        )
        assert code == 0, err
        assert isinstance(json.loads(out)["output"], str)
        code, out, _ = run(
            capsys,
            ws,
            "endpoint",
            "invoke",
            "demo-ep",
            "--request-file",
            str(request),
            "--deployment",
            "other",
        )
        assert code == 1

        code, out, _ = run(capsys, ws, "endpoint", "show", "demo-ep", "--json")
        shown = json.loads(out)
        port = shown["port"]
        assert shown["scoring_uri"] == f"http://127.0.0.1:{port}/score"
        assert shown["openapi_uri"] == f"http://127.0.0.1:{port}/swagger.json"
        assert shown["traffic"] == {"demo": 100} and shown["state"] == "running"
        assert shown["deployments"][0]["state"] == "ready" and shown["tags"] == {"team": "x"}

        code, out, _ = run(capsys, ws, "endpoint", "get-keys", "demo-ep", "--json")
        keys = json.loads(out)
        code, _, _ = run(
            capsys, ws, "endpoint", "regenerate-keys", "demo-ep", "--key-type", "secondary"
        )
        code, out, _ = run(capsys, ws, "endpoint", "get-keys", "demo-ep", "--json")
        new = json.loads(out)
        assert new["primary_key"] == keys["primary_key"]
        assert new["secondary_key"] != keys["secondary_key"]

        code, out, _ = run(capsys, ws, "deployment", "logs", "-e", "demo-ep", "-n", "demo")
        assert code == 0 and "starting instance 0" in out
        code, out, _ = run(
            capsys, ws, "deployment", "show", "-e", "demo-ep", "-n", "demo", "--json"
        )
        dep = json.loads(out)
        assert dep["settings"]["request_timeout_ms"] == 60000
        assert dep["settings"]["liveness_probe"]["initial_delay"] == 15
        instance_port = dep["instances"][0]["port"]

        # a machine restart: every process dies; `chattune up` brings the endpoint back
        kill_all(str(tmp_path))
        wait_for(lambda: processes_under(str(tmp_path)) == [], what="every process gone")
        code, out, err = run(capsys, ws, "up")
        assert code == 0, err
        assert f"endpoint demo-ep up on http://127.0.0.1:{port}/score (demo ready)" in out
        code, out, err = run(
            capsys, ws, "endpoint", "invoke", "demo-ep", "--request-file", str(request)
        )
        assert code == 0, err
        instance_port = D.get_deployment(ws, "demo-ep", "demo").instances[0].port

        code, _, err = run(capsys, ws, "endpoint", "delete", "demo-ep")
        assert code == 0, err
        assert processes_under(str(tmp_path)) == []
        assert port_free(port) and port_free(instance_port)
        code, _, err = run(capsys, ws, "endpoint", "show", "demo-ep")
        assert code == 2 and "no endpoint named" in err
    finally:
        kill_all(str(tmp_path))


@pytest.mark.integration
def test_lora_only_deployments_share_one_base(workspace, capsys, tiny_llama_dir, tmp_path) -> None:
    from tests.tiny_models import make_adapter

    ws = workspace
    models = {}
    for name, seed in (("lora-a", 1), ("lora-b", 2)):
        folder = tmp_path / name
        shutil.copytree(tiny_llama_dir, folder)  # a pytorch_model_folder: base + adapter/
        make_adapter(tiny_llama_dir, folder / "adapter", seed=seed)
        card = builtin_cards()["SmolLM2-135M-Instruct"]
        mv = add_version(ws, name=name, kind="registered", card=card, path=folder, source="t")
        models[name] = f"{mv.name}:{mv.version}"
    request = tmp_path / "req.json"
    request.write_text(json.dumps(SEED_REQUEST))
    try:
        assert run(capsys, ws, "endpoint", "create", "lora-ep")[0] == 0
        for name in ("lora-a", "lora-b"):
            code, _, err = run(
                capsys,
                ws,
                "deployment",
                "create",
                "-e",
                "lora-ep",
                "-n",
                name,
                "--model",
                models[name],
                "--lora-only",
                "--request-timeout-ms",
                "60000",
                *REAL_FLAGS,
            )
            assert code == 0, err
        deps = D.list_deployments(ws, "lora-ep")
        assert deps[0].group == deps[1].group and deps[0].group.startswith("lora-")
        pids = {d.name: d.instances[0].pid for d in deps}
        assert pids["lora-a"] == pids["lora-b"]  # one process holds the base and both adapters
        for name in ("lora-a", "lora-b"):
            code, out, err = run(
                capsys,
                ws,
                "endpoint",
                "invoke",
                "lora-ep",
                "--request-file",
                str(request),
                "--deployment",
                name,
            )
            assert code == 0, out + err
        code, _, err = run(capsys, ws, "deployment", "delete", "-e", "lora-ep", "-n", "lora-b")
        assert code == 0, err
        dep = D.get_deployment(ws, "lora-ep", "lora-a")  # the group restarted with one adapter
        assert dep.instances[0].pid != pids["lora-a"]
        code, _, err = run(capsys, ws, "endpoint", "delete", "lora-ep")
        assert code == 0, err
        assert processes_under(str(tmp_path)) == []
    finally:
        kill_all(str(tmp_path))
