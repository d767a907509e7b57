"""The layer order of DESIGN.md's architecture, declared once in pyproject.toml as an
import-linter contract, holds: no module imports a layer above its own."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import chattune

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _layers() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    return contract["layers"]


def test_no_import_runs_up_the_layers() -> None:
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(REPO / "pyproject.toml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_every_package_and_module_of_chattune_has_a_layer() -> None:
    named = {m.strip().strip("()") for layer in _layers() for m in layer.split("|")}
    root = Path(chattune.__file__).parent
    children = {
        f"chattune.{p.stem if p.is_file() else p.name}"
        for p in root.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
    }
    missing = sorted(children - named)
    assert not missing, f"add {missing} to the layers contract in pyproject.toml"
