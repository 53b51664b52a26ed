"""Freed activation memory kept for the next forward (glibc's malloc, CPU).

A CPU forward of a few thousand tokens allocates and frees tens of activations of 5-40 MB per layer. glibc serves
blocks that large with fresh ``mmap`` calls and returns them on ``free`` (and trims the heap's top once 2x that much
is free), so every layer touches new pages: 0.5-1.7 million page faults and about a second of kernel time per call
on a Qwen3-0.6B-shaped model (``benchmarks/bench_limit.py``). Raising the two thresholds makes those blocks come from
the heap and stay there for the next layer: no page faults after the first call, 10-20 % faster end to end. The
cost is memory the process keeps after a call (at most ``TRIM_THRESHOLD`` beyond what it uses).

Process-wide, so done once, logged, and skipped where the C library is not glibc or
``RMPLUGINS_KEEP_FREED_MEMORY=0`` is set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger("rmplugins")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20   # the largest glibc accepts: blocks up to this come from the heap
TRIM_THRESHOLD = 512 << 20  # free memory the heap keeps at its top before returning it

_done: list[bool] = []


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process (True when set)."""
    if _done:
        return _done[0]
    _done.append(False)
    if not sys.platform.startswith("linux") or os.environ.get("RMPLUGINS_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
            return False  # musl and others: their malloc has no such thresholds
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD) == 1
    except OSError:
        return False
    if ok:
        logger.info("rmplugins: glibc malloc keeps freed activations for the next forward (blocks up to %d MiB from "
                    "the heap, up to %d MiB kept free; RMPLUGINS_KEEP_FREED_MEMORY=0 turns this off)",
                    MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    _done[0] = ok
    return ok
