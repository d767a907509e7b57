"""The CLI starts without the training and serving stack: torch and transformers load only
in the processes that need them (a job's runner, a model server), so `chattune data
validate` and friends stay small and quick."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_loads_no_torch_or_transformers() -> None:
    code = (
        "import sys, chattune.cli.main\n"
        "heavy = [m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"the CLI imports {done.stdout.strip()} at start"
