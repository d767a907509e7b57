"""Keep freed memory for reuse: glibc malloc settings for training and serving processes.

glibc hands every allocation above its mmap threshold (128 KiB at first, rising to at most
32 MiB as big blocks are freed) a fresh `mmap`, and unmaps it again on free. A CPU training
step allocates and frees hundreds of activation tensors of several MiB each, plus the
(labels x vocabulary) logits in fp32, so each of them lands on fresh pages. The kernel faults
in and zeroes every one of those pages on first touch, again at every step.

In a bf16 SmolLM2-135M LoRA step of 2,048 tokens on this project's 2-core CPU, three ops were
dominated by those faults (torch.profiler, 2026-12-03):
- `logits.float()` on (914, 49152) took 0.94 s;
- the cross-entropy backward's `zero_` of the same size took 0.93 s;
- the autocast copies of (2048, 1536) activations ran at about 1.2 GB/s.

`tune_malloc()` stops glibc from using mmap for this process (`M_MMAP_MAX` 0) and raises
the trim threshold (`M_TRIM_THRESHOLD`), so freed blocks stay in the heap and are reused
with their pages already in place. This is what the jemalloc or tcmalloc preload that
PyTorch's CPU performance guide and Intel's launcher recommend achieves, without a library to
install. bench/malloc_tuning.py measures it on and off.

The cost: the process keeps its peak heap. Its RSS does not fall back after a peak, and a
freed block can only be reused by later allocations of this process.

Off: `CHATTUNE_MALLOC=default` in the environment. It is a no-op where the C library is not
glibc (macOS, musl).

Example:
    >>> tune_malloc()  # once, early in a training or serving process
    'tuned'
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger("chattune.compute")

MALLOC_ENV = "CHATTUNE_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # an int: give memory back only past 2 GiB free at the heap's top
_GLIBC_MMAP_MAX = 65536  # glibc's default M_MMAP_MAX

_state: str | None = None


def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def tune_malloc(enable: bool | None = None) -> str:
    """Keep this process's freed memory for reuse (see the module docstring); idempotent.

    Args:
        enable: True to tune, False to restore glibc's mmap use, None to follow
            `CHATTUNE_MALLOC` (tuned unless it says `default`).

    Returns:
        `tuned`, `default` (left as glibc has it), or `unsupported` (not glibc).
    """
    global _state
    if enable is None:
        enable = os.environ.get(MALLOC_ENV, "tuned").strip().lower() != "default"
    want = "tuned" if enable else "default"
    if _state == want:
        return want
    mallopt = _mallopt()
    if mallopt is None:
        _state = "unsupported"
        return _state
    if enable:
        ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    else:
        ok = mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX) == 1
    if not ok:  # glibc refused a value: leave it as it is
        log.warning(
            "glibc mallopt refused the settings; malloc left at its defaults (set "
            "%s=default to skip the attempt)",
            MALLOC_ENV,
        )
        _state = "default"
        return _state
    _state = want
    log.info("malloc %s: freed memory %s", want, "kept for reuse" if enable else "unmapped")
    return want


def malloc_state() -> str | None:
    """What `tune_malloc` last did in this process (None: not called)."""
    return _state
