"""bench/common.py's host check: it counts what else keeps the cores busy, now."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.bench.conftest import BENCH

if str(BENCH) not in sys.path:  # bench/ is a folder of scripts: `common` is imported by name
    sys.path.insert(0, str(BENCH))

import common


def test_busy_cores_sees_a_spinning_process() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = common.busy_cores(1.0)
    finally:
        spin.kill()
        spin.wait()
    assert 0.5 <= busy <= (os.cpu_count() or 1) + 0.01


def test_check_host_warns_and_records(capsys) -> None:
    quiet = common.check_host("T9", share=10.0)  # more than every core: never warns
    assert capsys.readouterr().err == ""
    assert set(quiet) == {"busy_cores_start", "load_average_start"}
    common.check_host("T9", share=-1.0)  # any figure is above it
    err = capsys.readouterr().err
    assert "busy before T9" in err and "not results" in err
