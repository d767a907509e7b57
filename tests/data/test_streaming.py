"""Big files stream: a 200,000-row file is validated and converted in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROWS = 200_000
BAD_EVERY = 1000  # one row in 1,000 has a single message
RSS_LIMIT_MB = 400

# Runs the command as its own child so that RUSAGE_CHILDREN holds that command alone, not
# whatever else this pytest process started before.
MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr,
                  "seconds": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measure(*args: str | Path) -> dict:
    """Run `python <args>` in a child; its exit code, output, seconds and peak RSS (MB)."""
    cmd = [sys.executable, "-c", MEASURE, sys.executable, *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(res.stdout)


def chattune(*args: str | Path) -> dict:
    return measure("-m", "chattune", *args)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    answer = "This is a fairly long assistant answer that repeats itself. " * 6
    with path.open("w", encoding="utf-8") as f:
        for i in range(ROWS):
            messages = [
                {"role": "user", "content": f"Question number {i}: tell me something about {i}."},
                {"role": "assistant", "content": f"{answer}{i}"},
                {"role": "user", "content": f"And why is {i} interesting?"},
                {"role": "assistant", "content": f"{answer}because {i}."},
            ]
            if i % BAD_EVERY == BAD_EVERY - 1:
                messages = messages[:1]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.mark.integration
def test_validate_200k_rows_in_bounded_memory(big_file: Path) -> None:
    # the control: the same file read whole into Python objects does not fit the bound
    load_all = f"import json; rows = [json.loads(x) for x in open({str(big_file)!r})]"
    control = measure("-c", load_all)
    assert control["rc"] == 0, control["err"]
    assert control["rss_mb"] > RSS_LIMIT_MB

    res = chattune("data", "validate", big_file, "--max-listed", "5")
    bad = ROWS // BAD_EVERY
    assert res["rc"] == 1, res["err"]
    out = " ".join(res["out"].split())
    assert f"{ROWS:,} rows, {ROWS - bad:,} valid, {bad:,} invalid" in out
    assert f"... and {bad - 5:,} more bad rows" in out
    print(
        f"validate: {ROWS / res['seconds']:,.0f} rows/s, peak RSS {res['rss_mb']:.0f} MB "
        f"(whole file in memory: {control['rss_mb']:.0f} MB)"
    )
    assert res["rss_mb"] < RSS_LIMIT_MB


@pytest.mark.integration
def test_download_of_a_200k_row_local_file_in_bounded_memory(
    big_file: Path, tmp_path: Path
) -> None:
    res = chattune(
        "data", "download", "--dataset", big_file, "--download-dir", tmp_path, "--split-pc", "50"
    )
    assert res["rc"] == 0, res["err"]
    out = tmp_path / "big.jsonl"
    with out.open("rb") as f:
        assert sum(1 for _ in f) == ROWS // 2
    first = json.loads(out.open(encoding="utf-8").readline())
    assert first["prompt"] == "Question number 0: tell me something about 0."
    print(
        f"download --split-pc 50: {res['seconds']:.1f} s for a {ROWS:,}-row file "
        f"(count pass + {ROWS // 2:,} rows converted), peak RSS {res['rss_mb']:.0f} MB"
    )
    assert res["rss_mb"] < RSS_LIMIT_MB
