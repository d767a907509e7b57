"""What a person meets: the real `chattune` as a process, its stdout a pipe.

With `COLUMNS=80` and with a 40-column width, every name, id and path a list or show
command prints appears whole (never cut with `…` nor folded across lines), and `--json`
of each prints JSON on stdout and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from chattune.compute.store import create_compute
from chattune.models.card import builtin_cards
from chattune.models.store import add_version
from chattune.serving import deployments as D
from chattune.serving import endpoints as E
from chattune.workspace import Workspace
from tests.cli.process import chattune
from tests.data.helpers import chat, write_jsonl

pytestmark = pytest.mark.integration  # a process per command

MODEL = "chitchat-assistant-from-smollm2-135m-instruct"
COMPUTE = "gpu-box-in-the-basement-lab-2"
ENDPOINT = "support-chat-endpoint-eu-west-1"
DEPLOYMENT = "blue-smollm2-chitchat-lora-v2"
DATA = "chitchat-support-conversations-2026-12-06.jsonl"


@dataclass
class Filled:
    ws: Workspace
    model_path: Path
    model_id: str
    data: Path
    scoring_uri: str


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    """A workspace holding one of each thing, each with a long name."""
    root = tmp_path_factory.mktemp("output")
    ws = Workspace.open(root / "ws")
    model_path = root / "a-folder-with-a-rather-long-name-for-the-model-files"
    model_path.mkdir()
    mv = add_version(
        ws,
        name=MODEL,
        kind="registered",
        card=builtin_cards()["SmolLM2-135M-Instruct"],
        path=model_path,
        source="test",
    )
    create_compute(ws, COMPUTE, "local")
    ep = E.create_endpoint(ws, ENDPOINT, port=1)
    D.create_deployment(
        ws,
        ENDPOINT,
        DEPLOYMENT,
        model_name=MODEL,
        model_version=mv.version,
        settings=D.DeploymentSettings(),
    )
    data = write_jsonl(root / DATA, [chat("hi", "hello"), chat("how are you?", "fine")])
    return Filled(ws, model_path, mv.id, data, ep.scoring_uri)


# (command, the texts it must print whole); `f` is the Filled workspace
TEXT_COMMANDS = {
    "model list": lambda f: (["model", "list"], [*builtin_cards(), MODEL]),
    "model show": lambda f: (
        ["model", "show", MODEL, "--version", "1"],
        [MODEL, f.model_id, str(f.model_path)],
    ),
    "compute show": lambda f: (["compute", "show"], [COMPUTE]),
    "compute fit": lambda f: (
        ["compute", "fit", "--model", "SmolLM2-135M-Instruct", "--compute", COMPUTE],
        [COMPUTE, "SmolLM2-135M-Instruct"],
    ),
    "endpoint list": lambda f: (["endpoint", "list"], [ENDPOINT, DEPLOYMENT, f.scoring_uri]),
    "endpoint show": lambda f: (
        ["endpoint", "show", ENDPOINT],
        [ENDPOINT, DEPLOYMENT, f"{MODEL}:1", f.scoring_uri],
    ),
    "deployment list": lambda f: (
        ["deployment", "list", "-e", ENDPOINT],
        [ENDPOINT, DEPLOYMENT, f"{MODEL}:1"],
    ),
    "deployment show": lambda f: (
        ["deployment", "show", "-e", ENDPOINT, "-n", DEPLOYMENT],
        [ENDPOINT, DEPLOYMENT, f"{MODEL}:1"],
    ),
    "data show": lambda f: (["data", "show", str(f.data)], [str(f.data)]),
    "data validate": lambda f: (["data", "validate", str(f.data)], [str(f.data)]),
    "engine list": lambda f: (["engine", "list"], ["builtin", "vllm", "engine install vllm"]),
}


@pytest.mark.parametrize("command", TEXT_COMMANDS)
def test_names_ids_and_paths_are_printed_whole(filled: Filled, command: str) -> None:
    args, names = TEXT_COMMANDS[command](filled)
    for columns in (80, 40):
        r = chattune(filled.ws.root, *args, columns=columns)
        assert r.returncode == 0, r.stderr
        missing = [n for n in names if n not in r.stdout]
        assert not missing, f"COLUMNS={columns}: {missing} cut in:\n{r.stdout}"
        assert "…" not in r.stdout, r.stdout


def test_model_list_fits_80_columns(tmp_path: Path) -> None:
    """The catalog of a fresh workspace, one model a line, within 80 columns (the title
    line names the workspace folder: as long as that is)."""
    r = chattune(tmp_path / "ws", "model", "list")
    lines = r.stdout.splitlines()[1:]
    assert r.returncode == 0 and max(map(len, lines)) <= 80, r.stdout
    for name in builtin_cards():
        assert sum(line.startswith(f"{name} ") for line in lines) == 1, r.stdout


# (command, a check of its parsed JSON)
JSON_COMMANDS = {
    "model list": lambda f: (
        ["model", "list"],
        lambda d: {MODEL, *builtin_cards()} <= {m["name"] for m in d},
    ),
    "model show": lambda f: (
        ["model", "show", MODEL, "--version", "1"],
        lambda d: d["id"] == f.model_id and d["path"] == str(f.model_path),
    ),
    "compute show": lambda f: (
        ["compute", "show"],
        lambda d: COMPUTE in {c["name"] for c in d["computes"]} and d["machine"]["cpu_model"],
    ),
    "compute sizes": lambda f: (["compute", "sizes"], lambda d: "local" in {s["name"] for s in d}),
    "compute fit": lambda f: (
        ["compute", "fit", "--model", "SmolLM2-135M-Instruct", "--compute", COMPUTE],
        lambda d: d["compute"] == COMPUTE and d["training"]["total_bytes"] > 0,
    ),
    "endpoint list": lambda f: (
        ["endpoint", "list"],
        lambda d: (
            [(e["name"], [x["name"] for x in e["deployments"]]) for e in d]
            == [(ENDPOINT, [DEPLOYMENT])]
        ),
    ),
    "endpoint show": lambda f: (
        ["endpoint", "show", ENDPOINT],
        lambda d: d["name"] == ENDPOINT and d["scoring_uri"] == f.scoring_uri,
    ),
    "endpoint get-keys": lambda f: (
        ["endpoint", "get-keys", ENDPOINT],
        lambda d: d["primary_key"] != d["secondary_key"] and len(d["primary_key"]) >= 32,
    ),
    "deployment list": lambda f: (
        ["deployment", "list", "-e", ENDPOINT],
        lambda d: [x["name"] for x in d] == [DEPLOYMENT],
    ),
    "deployment show": lambda f: (
        ["deployment", "show", "-e", ENDPOINT, "-n", DEPLOYMENT],
        lambda d: d["name"] == DEPLOYMENT and d["model"] == f"{MODEL}:1",
    ),
    "engine list": lambda f: (
        ["engine", "list"],
        lambda d: [e["name"] for e in d] == ["builtin", "vllm"] and not d[1]["installed"],
    ),
    "data show": lambda f: (["data", "show", str(f.data)], lambda d: d["rows"] == 2),
    "data validate": lambda f: (
        ["data", "validate", str(f.data)],
        lambda d: d["total"] == 2 and d["valid"] == 2,
    ),
}


@pytest.mark.parametrize("command", JSON_COMMANDS)
def test_json_is_all_of_stdout(filled: Filled, command: str) -> None:
    args, check = JSON_COMMANDS[command](filled)
    r = chattune(filled.ws.root, *args, "--json", columns=40)
    assert r.returncode == 0, r.stderr
    assert check(json.loads(r.stdout)), r.stdout  # json.loads: nothing but JSON on stdout
