"""glibc malloc tuning: freed memory is reused without new page faults; on, off, unsupported."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from chattune.host import malloc

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# a fresh process doing what a training step does with memory: tensors of several MiB made,
# touched and freed, round after round; the pages the kernel faults in, per round. glibc's
# heap takes a few rounds to settle when tuned (its aligned allocations leave fragments
# first), so the rounds are judged by their median
_PROBE = """
import json, resource, torch
from chattune.host.malloc import tune_malloc
state = tune_malloc()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    a = torch.empty(4 * 2**20).fill_(1.0)
    b = torch.empty(16 * 2**20).fill_(2.0)
    return float(a[:4].sum() + b[:4].sum())
for _ in range(4):
    step()
per_round = []
for _ in range(12):
    f0 = faults()
    total = step()
    per_round.append(faults() - f0)
print(json.dumps({"state": state, "faults": sorted(per_round)[6], "sum": total}))
"""


def probe(setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != malloc.MALLOC_ENV}
    if setting is not None:
        env[malloc.MALLOC_ENV] = setting
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuned_process_reuses_freed_memory_without_page_faults() -> None:
    tuned, default = probe(None), probe("default")
    assert tuned["state"] == "tuned" and default["state"] == "default"
    assert tuned["sum"] == default["sum"] == 12.0
    # a round's 80 MiB are 20,480 pages of 4 KiB: glibc maps them afresh unless tuned
    assert tuned["faults"] < 1000
    assert tuned["faults"] <= default["faults"] // 4


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tune_malloc_is_idempotent_and_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setattr(malloc, "_state", None)
    calls: list[tuple[int, int]] = []
    real = malloc._mallopt()

    def spy() -> object:
        def call(param: int, value: int) -> int:
            calls.append((param, value))
            return real(param, value)

        return call

    monkeypatch.setattr(malloc, "_mallopt", spy)
    try:
        assert malloc.tune_malloc(True) == "tuned"
        assert malloc.tune_malloc(True) == "tuned"
        assert calls == [(malloc._M_MMAP_MAX, 0), (malloc._M_TRIM_THRESHOLD, 2**31 - 1)]
        assert malloc.tune_malloc(False) == "default"
        assert calls[-1] == (malloc._M_MMAP_MAX, malloc._GLIBC_MMAP_MAX)
        assert malloc.malloc_state() == "default"
    finally:
        malloc.tune_malloc(True)  # as the rest of this process found it (the tests' default)


def test_environment_default_keeps_glibc_settings(monkeypatch) -> None:
    monkeypatch.setattr(malloc, "_state", None)
    monkeypatch.setenv(malloc.MALLOC_ENV, "default")
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(malloc, "_mallopt", lambda: lambda p, v: calls.append((p, v)) or 1)
    assert malloc.tune_malloc() == "default"
    assert calls == [(malloc._M_MMAP_MAX, malloc._GLIBC_MMAP_MAX)]  # mmap left on


def test_without_glibc_nothing_is_changed(monkeypatch) -> None:
    monkeypatch.setattr(malloc, "_state", None)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert malloc.tune_malloc() == "unsupported"
    assert malloc.malloc_state() == "unsupported"


def test_a_refused_setting_leaves_the_defaults(monkeypatch, caplog) -> None:
    monkeypatch.setattr(malloc, "_state", None)
    monkeypatch.setattr(malloc, "_mallopt", lambda: lambda p, v: 0)
    assert malloc.tune_malloc(True) == "default"
    assert "refused" in caplog.text
