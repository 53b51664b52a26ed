"""CPU threads that fit the machine as it is now.

A forward on the CPU is hundreds of small parallel regions (one per matmul, norm, attention call), each ending in a
barrier that waits for its slowest thread. With as many threads as cores and one other busy process, one of ours is
always waiting for a core: every region waits for it, and the engine ran 8x slower beside a single CPU-bound process
(issue 28; a trainer beside the scorer, a shared CI machine, a laptop). Measured on 2 cores beside one busy process:
2 threads 3.67 s, 1 thread 2.55 s (quiet: 1.29 s and 2.52 s). So each call runs with at most as many threads as
cores other processes leave free, read from the kernel's count of runnable threads (``/proc/loadavg``) less this
process's own (``/proc/self/task``: counted as load, our own OpenMP workers, still spinning after the previous
forward, halved every other forward on a quiet machine: 7.8 s against 5.2 s) before each forward (a process that was
busy a moment ago costs one forward, not a whole call), and the configured number is restored after it. Only ever
fewer threads than configured, never more; and not at all in a process pinned to part of a larger machine, whose
runnable count is not about its cores.

The counts lie on a ladder (:func:`thread_counts`: the configured count, one less, then three quarters of each
step down to 1): every thread count a forward runs with is a compiled kernel of its own for each fused kernel
(:mod:`.fused`), and a count per free core would compile a machine's cores over (and past dynamo's limit of graphs
per kernel, after which a kernel ran eagerly for good: on 4 or more cores under a changing load, measured). A
forward uses at most a quarter fewer cores than are free, and all of them beside one busy process; on 2 to 5 cores
every count is on the ladder.

A process where vLLM's CPU worker runs (an in-process ``engine="vllm"`` model beside this engine's) has its OpenMP
threads bound to cores by vLLM, which then replaces ``torch.set_num_threads`` with a no-op that warns: the thread
count is vLLM's, and the engine leaves it alone there (:func:`owned_elsewhere`; logged once), instead of a warning
for every change and a fitting that never happens.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

import torch

logger = logging.getLogger("rmplugins")
_said_owned: list[bool] = []

SAMPLES = 2  # reads of the runnable count, half a millisecond apart: the least is kept (a blip is not load)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def whole_machine() -> bool:
    """Whether this process may run on every CPU of the machine. The kernel's runnable count is machine-wide: a
    process pinned to a few cores of a larger host (a container's cpuset) cannot tell which of that load is on its
    own cores, so it does not fit its threads to it."""
    return cores() >= (os.cpu_count() or 1)


def runnable_here(task_dir: str = "/proc/self/task") -> int:
    """This process's runnable threads (its own OpenMP workers spin for a moment after every parallel region: they
    are not another process's load). Counts the calling thread."""
    count = 0
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:  # the thread ended meanwhile
            continue
        count += stat[stat.rindex(")") + 2] == "R"
    return count


def runnable_elsewhere(path: str = "/proc/loadavg", task_dir: str = "/proc/self/task") -> int | None:
    """Threads of other processes that are runnable now (None where the kernel does not say): the kernel's count of
    runnable threads less this process's own (read first: ours only wind down between forwards, so a thread that
    stops spinning between the two reads is not taken for another process's)."""
    least = None
    for i in range(SAMPLES):
        try:
            own = runnable_here(task_dir)
            with open(path) as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        elsewhere = max(0, running - own)
        least = elsewhere if least is None else min(least, elsewhere)
        if least == 0:  # a quiet machine: nothing lower to find, and each read walks this process's threads
            break
        if i + 1 < SAMPLES:
            time.sleep(0.0005)
    return least


def thread_counts(configured: int) -> list[int]:
    """The thread counts a forward may run with, highest first: ``configured``, one less (the usual case: one other
    busy process, a trainer beside the scorer), then three quarters of each step (rounded down, at least one less)
    down to 1. 16 cores: 16, 15, 11, 8, 6, 4, 3, 2, 1."""
    counts = [max(1, configured)]
    while counts[-1] > 1:
        step = counts[-1] - 1 if len(counts) == 1 else counts[-1] * 3 // 4
        counts.append(max(1, min(counts[-1] - 1, step)))
    return counts


def owned_elsewhere() -> bool:
    """Whether another library has taken this process's thread count: ``torch.set_num_threads`` is no longer
    torch's own (vLLM's CPU worker replaces it once it has bound its OpenMP threads to cores)."""
    owned = torch.set_num_threads is not torch._C.set_num_threads
    if owned and not _said_owned:
        _said_owned.append(True)
        logger.info("rmplugins: torch.set_num_threads was replaced in this process (vLLM's CPU worker binds its "
                    "threads to cores and then refuses changes): the engine keeps the thread count as it is "
                    "(%d) instead of fitting it to the load", torch.get_num_threads())
    return owned


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` only where the count differs: a count in place is not set again (vLLM's
    replacement of the setter warns at every call)."""
    if n != torch.get_num_threads():
        torch.set_num_threads(n)


def fitting_threads(configured: int, available: int, busy: int | None) -> int:
    """The highest count of :func:`thread_counts` that the cores other processes leave free can run."""
    if busy is None:
        return configured
    free = max(1, min(configured, available - busy))
    return next(n for n in thread_counts(configured) if n <= free)


@contextmanager
def threads_that_fit(enabled: bool = True, layers=()):
    """Within the block torch uses at most the cores that other runnable threads leave free: decided on entry and
    again before each of ``layers`` (a forward of thousands of tokens takes seconds, and other processes come and
    go meanwhile)."""
    configured = torch.get_num_threads()
    if not (enabled and configured > 1 and whole_machine() and not owned_elsewhere()):
        yield configured
        return

    def fit(*_):
        set_threads(fitting_threads(configured, cores(), runnable_elsewhere()))

    fit()
    hooks = [layer.register_forward_pre_hook(fit) for layer in layers]
    try:
        yield torch.get_num_threads()
    finally:
        for hook in hooks:
            hook.remove()
        set_threads(configured)
