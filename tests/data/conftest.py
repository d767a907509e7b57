from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def flat_out(self) -> str:
        """stdout with runs of whitespace made one space (rich wraps long lines)."""
        return " ".join(self.out.split())

    @property
    def flat_err(self) -> str:
        return " ".join(self.err.split())


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., CliResult]:
    """Run `chattune <args>` in-process through the real entry point; capture its output."""
    from chattune.cli import common
    from chattune.cli.main import main

    # Wide consoles, so that tables and messages are not cut at 80 columns. `_width` (not
    # the `width` property) so that the undo restores "auto" rather than pinning 80.
    monkeypatch.setattr(common.console, "_width", 250)
    monkeypatch.setattr(common.err_console, "_width", 250)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
