"""The seed's notebook (`examples/seed_notebook.py`) runs end to end on chattune, on a tiny
model: download, fine-tune, register, deploy, invoke, delete (integration)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chattune.cli.main import main
from chattune.workspace import Workspace

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# What the seed's own code applies on top of its parameters (its `model_specific_defaults`
# cell): a short run, so that the whole notebook takes a minute on a tiny model.
FAST_DEFAULTS = {
    "max_steps": "6",
    "max_seq_length": "128",
    "logging_steps": "2",
    "save_steps": "3",
    "eval_sample_size": "2",
    "eval_max_new_tokens": "8",
}


def test_notebook_is_in_sync_with_its_script() -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_notebook.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _tiny_chat_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = 8192  # room for a whole chitchat conversation + 200
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_seed_notebook_end_to_end(tmp_path: Path, tiny_llama_dir: Path) -> None:
    home = tmp_path / "ws"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("seed_notebook.py", "download-dataset.py"):
        shutil.copy(EXAMPLES / name, run_dir / name)
    model = _tiny_chat_model(tiny_llama_dir, tmp_path / "tiny-chat-src")
    assert (
        main(["model", "import", str(model), "--name", "tiny-chat", "--workspace", str(home)]) == 0
    )
    ws = Workspace.open(home)
    with ws.write() as conn:
        conn.execute(
            "UPDATE models SET card = json_set(card, '$.model_specific_defaults', json(?)) "
            "WHERE name = 'tiny-chat'",
            (json.dumps(FAST_DEFAULTS),),
        )
    env = {
        **os.environ,
        "CHATTUNE_HOME": str(home),
        "CHATTUNE_SEED_MODEL": "tiny-chat",
        # the seed calls `python ./download-dataset.py`: this interpreter's python first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    try:
        r = subprocess.run(
            [sys.executable, "seed_notebook.py"],
            cwd=run_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
    finally:  # whatever the notebook left running is stopped
        from chattune.serving.control import lifecycle as control
        from chattune.serving.endpoints import list_endpoints

        for ep in list_endpoints(ws):
            with contextlib.suppress(Exception):
                control.delete_endpoint(ws, ep.name)

    # each step of the seed left its trace
    assert "Using model name: tiny-chat, version: 1" in out
    assert "Number of GPU's in compute Standard_NC6s_v3" in out
    assert (run_dir / "chitchat_dataset" / "train_sft.jsonl").is_file()
    assert "Status: Completed" in out
    assert "trained_model" in out and "azureml://jobs/" in out
    raw = out.split("raw response: \n", 1)[1].strip().splitlines()[0]
    assert isinstance(json.loads(raw)["output"], str)
    # the registered model carries its lineage; the endpoint is gone
    from chattune.models.store import list_models
    from chattune.serving.endpoints import list_endpoints

    registered = [v for v in list_models(ws, "tiny-chat-ultrachat-200k")]
    assert len(registered) == 1 and registered[0].lineage["job"]
    assert list_endpoints(ws) == []
