"""CPU threads that fit the machine as it is now.

A forward on the CPU is hundreds of small parallel regions (one per matmul, norm, attention call), each ending in a
barrier that waits for its slowest thread. With as many threads as cores and one other busy process, one of ours is
always waiting for a core: every region waits for it, and the engine ran 8x slower beside a single CPU-bound process
(issue 28; a trainer beside the scorer, a shared CI machine, a laptop). Measured on 2 cores beside one busy process:
2 threads 3.67 s, 1 thread 2.55 s (quiet: 1.29 s and 2.52 s). So each call runs with at most as many threads as
cores other processes leave free, read from the kernel's count of runnable threads (``/proc/loadavg``) before
each forward (a process that was busy a moment ago, e.g. another engine's threads still spinning after its call,
costs one forward, not a whole call), and the configured number is restored after it. Only ever fewer threads
than configured, never more.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch

SAMPLES = 2  # reads of the runnable count, half a millisecond apart: the least is kept (a blip is not load)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runnable_elsewhere(path: str = "/proc/loadavg") -> int | None:
    """Threads other than the caller's that are runnable now (None where the kernel does not say)."""
    least = None
    for i in range(SAMPLES):
        try:
            with open(path) as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        least = running if least is None else min(least, running)
        if i + 1 < SAMPLES:
            time.sleep(0.0005)
    return max(0, least - 1)  # the reading thread itself is running


def fitting_threads(configured: int, available: int, busy: int | None) -> int:
    if busy is None:
        return configured
    return max(1, min(configured, available - busy))


@contextmanager
def threads_that_fit(enabled: bool = True):
    """Within the block torch uses at most the cores that other runnable threads leave free."""
    configured = torch.get_num_threads()
    n = fitting_threads(configured, cores(), runnable_elsewhere()) if enabled and configured > 1 else configured
    if n == configured:
        yield configured
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(configured)
