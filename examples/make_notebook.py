"""Write `seed_notebook.ipynb` from `seed_notebook.py` (cells start at `# %%` lines).

    python examples/make_notebook.py          # rewrite the notebook
    python examples/make_notebook.py --check  # exit 1 if the notebook is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "seed_notebook.py"
NOTEBOOK = HERE / "seed_notebook.ipynb"


def cells(text: str) -> list[dict]:
    out: list[dict] = []
    for chunk in text.split("# %%")[1:]:
        header, _, body = chunk.partition("\n")
        if header.strip().startswith("[markdown]"):
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines()]
            out.append({"cell_type": "markdown", "metadata": {}, "source": _lines(lines)})
            continue
        title = header.strip()
        code = body.strip("\n").splitlines()
        if title:
            out.append({"cell_type": "markdown", "metadata": {}, "source": [f"### {title}"]})
        out.append(
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": _lines(code),
            }
        )
    return out


def _lines(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return [ln + "\n" for ln in lines[:-1]] + lines[-1:]


def notebook() -> str:
    nb = {
        "cells": cells(SOURCE.read_text()),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    text = notebook()
    if "--check" in sys.argv:
        if not NOTEBOOK.is_file() or NOTEBOOK.read_text() != text:
            print(f"{NOTEBOOK} is out of date: run python {Path(__file__).name}")
            return 1
        return 0
    NOTEBOOK.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
