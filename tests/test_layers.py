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


def test_the_readme_architecture_names_every_layer_in_order() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    where = {}
    for layer in _layers():
        for module in layer.split("|"):
            short = module.strip().strip("()").removeprefix("chattune.")
            found = [
                i for i, row in enumerate(rows) if f"`{short}/`" in row or f"`{short}.py`" in row
            ]
            assert found, f"README's Architecture section does not name {short}"
            where[short] = found[0]
    order = [
        where[m.strip().strip("()").removeprefix("chattune.")]
        for layer in _layers()
        for m in layer.split("|")
    ]
    assert order == sorted(order), "README's Architecture rows are not in the contract's order"
