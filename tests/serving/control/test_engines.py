"""The engine interface: the built-in model server's launch command is what its own command
line accepts, and the gateway forwards exactly the paths it declares."""

from __future__ import annotations

import sys

import pytest

from chattune.serving.control.engines import (
    MODEL_SERVER_ENV,
    BuiltinModelServer,
    InstanceEngine,
    Launch,
)
from chattune.serving.gateway.app import router as gateway_router
from chattune.serving.keys import INSTANCE_KEY_ENV
from chattune.serving.model_server import cli
from chattune.serving.model_server.app import create_app
from chattune.serving.model_server.auth import PROBE_PATHS

KEY = "k-" + "x" * 41
LAUNCH = Launch(
    "/m", (("a1", "/a1"), ("a2", "/a2")), "blue", 4321, 99, torch_threads=2, instance_key=KEY
)


def test_builtin_command_is_the_model_server_command_line(monkeypatch) -> None:
    engine: InstanceEngine = BuiltinModelServer()
    cmd = engine.command(LAUNCH)
    assert cmd[:3] == [sys.executable, "-m", "chattune.serving.model_server"]
    seen = {}

    def fake_create_app(model_dir, **kw):
        seen.update(kw, model_dir=model_dir)
        raise SystemExit(0)  # parsed; do not serve

    monkeypatch.setattr(cli, "create_app", fake_create_app)
    monkeypatch.setattr(cli.torch, "set_num_threads", lambda n: seen.update(threads=n))
    with pytest.raises(SystemExit):
        cli.main(cmd[3:])
    assert str(seen["model_dir"]) == "/m" and seen["served_name"] == "blue"
    assert {k: str(v) for k, v in seen["adapters"].items()} == {"a1": "/a1", "a2": "/a2"}
    assert seen["threads"] == 2


def test_env_names_another_module(monkeypatch) -> None:
    monkeypatch.setenv(MODEL_SERVER_ENV, "tests.serving.control.fake_model_server")
    assert BuiltinModelServer.from_env().command(LAUNCH)[2] == (
        "tests.serving.control.fake_model_server"
    )


def test_gateway_forwards_the_declared_paths_and_the_server_answers_them() -> None:
    engine = BuiltinModelServer()
    forwarded = {r.path for r in gateway_router.routes if "POST" in getattr(r, "methods", ())}
    assert forwarded == set(engine.forwarded_paths)
    server_paths = set(create_app(served_name="x").openapi()["paths"])
    assert {*engine.forwarded_paths, engine.liveness_path, engine.readiness_path} <= server_paths


def test_the_instance_key_goes_in_the_environment_never_on_the_command_line() -> None:
    engine: InstanceEngine = BuiltinModelServer()
    assert engine.env(LAUNCH)[INSTANCE_KEY_ENV] == KEY
    assert not any(KEY in part for part in engine.command(LAUNCH))  # `ps` shows it to all
    assert KEY not in repr(LAUNCH)


def test_the_probes_the_supervisor_sends_need_no_key() -> None:
    engine = BuiltinModelServer()
    assert {engine.liveness_path, engine.readiness_path} <= PROBE_PATHS
    assert not set(engine.forwarded_paths) & PROBE_PATHS
