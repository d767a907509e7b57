"""Every `chattune ...` command in the README parses: its subcommand exists and every flag
and argument it passes is accepted, with the values it shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from chattune.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            line = re.split(r"\s+#", line.strip(), maxsplit=1)[0].strip()
            if line.startswith("chattune "):
                commands.append(line)
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_every_step() -> None:
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert {"model", "compute", "data", "job", "endpoint", "deployment", "up"} <= shown
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line: str) -> None:
    args = shlex.split(line)[1:]
    cmd = typer.main.get_command(app)
    info = "chattune"
    while args and hasattr(cmd, "commands") and args[0] in cmd.commands:
        info += f" {args[0]}"
        cmd = cmd.commands[args.pop(0)]
    assert not hasattr(cmd, "commands"), f"{line!r}: no such command"
    # parsing checks the subcommand, every flag, its value's type and the arguments
    cmd.make_context(info, list(args))


# The README commands that run offline in seconds, executed as written in a fresh workspace;
# the hub ones must fail fast naming the offline alternative. (Jobs, endpoints and the rest
# run in `make demo` and the CLI tests.)
RUN_AS_WRITTEN = (
    "chattune model list",
    "chattune model show Phi-3-mini-4k-instruct",
    "chattune compute show",
    "chattune compute fit",
    "chattune data download --dataset chitchat",
    "chattune data validate",
)
HUB = ("Qwen/", "HuggingFaceH4/")


@pytest.mark.integration
def test_offline_readme_commands_run_as_written(tmp_path: Path, monkeypatch) -> None:
    import os
    import subprocess
    import sys

    chattune = Path(sys.executable).parent / "chattune"
    env = {**os.environ, "CHATTUNE_HOME": str(tmp_path / "ws")}
    ran = 0
    for line in COMMANDS:
        hub = any(h in line for h in HUB)
        if not (hub or line.startswith(RUN_AS_WRITTEN)):
            continue
        args = shlex.split(line)[1:]
        r = subprocess.run(
            [str(chattune), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = r.stdout + r.stderr
        if hub:
            # fails fast, says why, and names the offline alternative
            offline = "chitchat" in out or "SmolLM2-135M-Instruct" in out
            assert r.returncode == 2 and "Hub" in out and offline, f"{line}\n{out[-2000:]}"
        else:
            assert r.returncode == 0, f"{line}\n{out[-2000:]}"
        ran += 1
    assert ran >= 9  # 6 catalog, compute and data commands, 3 hub ones
    assert (tmp_path / "chitchat_dataset" / "train_sft.jsonl").is_file()
