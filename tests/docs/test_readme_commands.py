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
