"""``load_reward_model``: identify the checkpoint (:mod:`rmplugins.checkpoints`), then load it with its family's
native implementation (one module per family in :mod:`rmplugins.families`)."""

from __future__ import annotations

import logging
import os
from typing import Any

from .checkpoints import KINDS, check_attention, default_attention, default_device, detect_kind, identify, resolve_dtype
from .families.armorm import ArmoRMRewardModel
from .families.bt import BradleyTerryRewardModel
from .families.gpm import GPMRewardModel
from .families.pair_pm import PairPMRewardModel
from .families.pairrm import PairRMRewardModel
from .families.prm import ProcessRewardModel

logger = logging.getLogger("rmplugins")

FAMILIES = {"bt": BradleyTerryRewardModel, "armorm": ArmoRMRewardModel, "pair_pm": PairPMRewardModel,
            "pairrm": PairRMRewardModel, "gpm": GPMRewardModel, "prm": ProcessRewardModel}
ENGINES = ("transformers", "vllm")
__all__ = ["ENGINES", "FAMILIES", "KINDS", "detect_kind", "load_reward_model"]


def load_reward_model(name_or_path: str | os.PathLike, *, kind: str | None = None, device: str | None = None,
                      dtype: Any = None, engine: str = "transformers", vllm_args: dict | None = None, **options):
    """Load any supported reward or preference model from a local directory or a hub id.

    ``kind`` (``"bt" | "armorm" | "pair_pm" | "pairrm" | "gpm" | "prm"``) is detected when omitted. ``device``
    defaults to CUDA when available, ``dtype`` to bfloat16 on GPU and float32 on CPU. Options: ``max_length``,
    ``token_budget`` (tokens per micro-batch), ``attn_implementation``, ``device_map`` (e.g. "auto" for models
    larger than one GPU), ``chat_template``, ``deterministic`` (each row scored alone, so its numbers never
    depend on what it is batched with; see ``RewardModel.deterministic``); per family ``tau`` (GPM),
    ``temperature`` (pair-PM), ``variant`` (PairRM: "pairrm" or "better").

    ``engine``: ``"transformers"`` (default: rmplugins' own engine, prefix sharing, any family) or ``"vllm"``
    (the model call runs on a vLLM engine, :mod:`rmplugins.vllm_scoring`; every family but PairRM).
    ``vllm_args``: ``vllm.LLM`` arguments for that engine (``tensor_parallel_size``, ``gpu_memory_utilization``,
    ``max_model_len``, ...); with it, ``device`` is vLLM's to choose and ``dtype`` is passed to vLLM.
    ``asynchronous=True`` (engine "vllm"): an ``AsyncLLM`` that several threads call at once, batched by vLLM's
    scheduler (the reward server uses it); the default is an offline ``vllm.LLM``, one call at a time.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {ENGINES}")
    if vllm_args is not None and engine != "vllm":
        raise ValueError("vllm_args is for engine='vllm'; add engine='vllm' or drop vllm_args")
    deterministic = bool(options.pop("deterministic", False))
    checkpoint = identify(name_or_path, kind=kind, variant=options.pop("variant", None))
    if engine == "vllm":
        from .vllm_scoring import load_on_vllm, require_vllm
        from .vllm_support import on_cpu

        require_vllm()
        if device is not None:
            raise ValueError(f"device={device!r}: with engine='vllm', vLLM places the model itself; drop device, "
                             "and set vLLM's placement in vllm_args (e.g. tensor_parallel_size)")
        asynchronous = bool(options.pop("asynchronous", False))
        dtype = resolve_dtype(dtype, "cpu" if on_cpu() else "cuda")
        logger.info("loading %s as kind %r (from %s) on vLLM (%s)", name_or_path, checkpoint.kind, checkpoint.source,
                    str(dtype).replace("torch.", ""))
        rm = load_on_vllm(checkpoint, name_or_path=str(name_or_path), dtype=dtype, vllm_args=vllm_args,
                          asynchronous=asynchronous, **options)
        rm.deterministic = deterministic
        return rm
    device = str(device or default_device())
    dtype = resolve_dtype(dtype, device)
    options.setdefault("attn_implementation", default_attention(device, checkpoint.config))
    check_attention(options["attn_implementation"], checkpoint.config, name_or_path)
    variant = f", variant {checkpoint.variant!r}" if checkpoint.variant else ""
    logger.info("loading %s as kind %r%s (from %s) on %s (%s)", name_or_path, checkpoint.kind, variant,
                checkpoint.source, device, str(dtype).replace("torch.", ""))
    try:
        rm = FAMILIES[checkpoint.kind].from_pretrained(checkpoint, name_or_path=str(name_or_path), device=device,
                                                       dtype=dtype, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise TypeError(f"load_reward_model: option not supported for kind {checkpoint.kind!r}: {err}") from err
        raise
    rm.deterministic = deterministic
    return rm
