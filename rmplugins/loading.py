"""``load_reward_model``: identify the checkpoint (:mod:`rmplugins.checkpoints`), look its family up in the
registry (:mod:`rmplugins.registry`), and load it with its native implementation on the chosen backend."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import os
from typing import Any

from .checkpoints import identify
from .options import whole_number
from .placement import check_attention, check_device, check_dtype, default_attention, default_device, resolve_dtype
from .registry import FAMILIES, family

logger = logging.getLogger("rmplugins")

ENGINES = ("transformers", "vllm")
__all__ = ["ENGINES", "load_reward_model"]


def load_reward_model(name_or_path: str | os.PathLike, *, kind: str | None = None, device: str | None = None,
                      dtype: Any = None, engine: str = "transformers", vllm_args: dict | None = None, **options):
    """Load any supported reward or preference model from a local directory or a hub id.

    ``kind`` (``"bt" | "armorm" | "pair_pm" | "pairrm" | "gpm" | "prm" | "genrm"``) is detected when omitted, but
    for a generative judge: ``kind="genrm"`` with ``judge=`` (a :class:`~rmplugins.judges.JudgeSpec`, a preset name or
    a JSON file) turns any causal LM into a judge. ``device``
    defaults to CUDA when available, ``dtype`` to bfloat16 on GPU and float32 on CPU. Options: ``max_length``,
    ``token_budget`` (tokens per micro-batch), ``attn_implementation``, ``device_map`` (e.g. "auto" for models
    larger than one GPU), ``chat_template``, ``deterministic`` (each row scored alone, so its numbers never
    depend on what it is batched with; see ``RewardModel.deterministic``); per family ``tau`` (GPM),
    ``temperature`` (pair-PM), ``variant`` (PairRM: "pairrm" or "better").

    ``engine``: ``"transformers"`` (default: rmplugins' own engine, prefix sharing, any family) or ``"vllm"``
    (the model call runs on a vLLM engine, :mod:`rmplugins.vllm.backend`; every family but PairRM).
    ``vllm_args``: ``vllm.LLM`` arguments for that engine (``tensor_parallel_size``, ``gpu_memory_utilization``,
    ``max_model_len``, ...); with it, ``device`` is vLLM's to choose and ``dtype`` is passed to vLLM.
    ``asynchronous=True`` (engine "vllm"): an ``AsyncLLM`` that several threads call at once, batched by vLLM's
    scheduler (the reward server uses it); the default is an offline ``vllm.LLM``, one call at a time.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {ENGINES}")
    if vllm_args is not None and engine != "vllm":
        raise ValueError("vllm_args is for engine='vllm'; add engine='vllm' or drop vllm_args")
    if device is not None and engine != "vllm":
        device = check_device(device, "device=")
    check_dtype(dtype)
    for option in ("max_length", "token_budget"):  # 0 read as "the default", 2.5 as 2: refused instead
        if options.get(option) is not None:
            options[option] = whole_number(option, options[option], 1)
    deterministic = options.pop("deterministic", False)
    if not isinstance(deterministic, bool):
        raise ValueError(f"deterministic must be True or False, got {deterministic!r}")
    checkpoint = identify(name_or_path, kind=kind, variant=options.pop("variant", None))
    if options.get("judge") is not None and checkpoint.kind != "genrm":
        raise ValueError(f"judge= is an option of generative judges (kind='genrm'); {name_or_path} is kind "
                         f"{checkpoint.kind!r}: add kind='genrm' to load it as a judge, or drop judge=")
    spec = family(checkpoint.kind)
    cls = spec.model_class()
    check_options(cls, checkpoint.kind, engine, options)
    name = str(name_or_path)
    if engine == "vllm":
        rm = _load_on_vllm(cls, spec, checkpoint, name, device, dtype, vllm_args, options)
    else:
        device = str(device or default_device())
        dtype = resolve_dtype(dtype, device)
        options.setdefault("attn_implementation", default_attention(device, checkpoint.config))
        check_attention(options["attn_implementation"], checkpoint.config, name_or_path)
        variant = f", variant {checkpoint.variant!r}" if checkpoint.variant else ""
        logger.info("loading %s as kind %r%s (from %s) on %s (%s)", name_or_path, checkpoint.kind, variant,
                    checkpoint.source, device, str(dtype).replace("torch.", ""))
        rm = _construct(cls, checkpoint, name, device=device, dtype=dtype, **options)
    trained = checkpoint.text.get("max_position_embeddings")
    if options.get("max_length") and isinstance(trained, int) and options["max_length"] > trained:
        logger.warning("%s: max_length %d is beyond the %d positions the model was trained for "
                       "(max_position_embeddings): a longer conversation is scored at positions it never saw, and its "
                       "reward is a guess", name, options["max_length"], trained)
    rm.deterministic = deterministic
    return rm


# options load_reward_model takes itself (the rest go to the family's from_pretrained)
OWN_OPTIONS = ("kind", "device", "dtype", "engine", "vllm_args", "deterministic", "variant")
ENGINE_OPTIONS = {"asynchronous": "vllm"}  # options of one engine, not of a family


def family_options(cls) -> list[str]:
    """The options a family's ``from_pretrained`` takes (its signature: the one list, never a copy of it)."""
    hidden = {"cls", "checkpoint", "name_or_path", "device", "dtype", "backend"}
    return sorted(p.name for p in inspect.signature(cls.from_pretrained).parameters.values()
                  if p.kind is p.KEYWORD_ONLY and p.name not in hidden)


def check_options(cls, kind: str, engine: str, options: dict) -> None:
    """Refuse an option the family does not take, before anything loads, saying where it belongs instead: another
    engine's, another family's, or (for a generative judge) a field of its :class:`~rmplugins.judges.JudgeSpec`."""
    from .judges.spec import JudgeSpec

    accepted = set(family_options(cls)) | {o for o, e in ENGINE_OPTIONS.items() if e == engine}
    unknown = [option for option in options if option not in accepted]
    if not unknown:
        return
    option = unknown[0]
    own = [o for o in OWN_OPTIONS if o != "variant" or kind == "pairrm"]
    listed = ", ".join(sorted(accepted | set(own)))
    message = f"load_reward_model: kind {kind!r} has no option {option!r} (its options: {listed})"
    spec_fields = {f.name for f in dataclasses.fields(JudgeSpec)}
    others = [o.kind for o in FAMILIES.values() if o.kind != kind and option in family_options(o.model_class())]
    close = difflib.get_close_matches(option, sorted(accepted | set(own)), n=1)
    if option in ENGINE_OPTIONS:
        message += f"; {option} is an option of engine={ENGINE_OPTIONS[option]!r}"
    elif kind == "genrm" and option in spec_fields:
        judge = options.get("judge")
        if isinstance(judge, (str, os.PathLike)) and str(judge).endswith(".json"):
            where = f'add "{option}" to {judge}'
        elif isinstance(judge, str):
            where = f"pass judge=rmplugins.PRESETS[{judge!r}].with_options({option}=...)"
        else:
            where = f"pass judge=your_spec.with_options({option}=...)"
        message += (f"; {option} is a field of the judge's spec: {where} (CLI: --judge takes a JSON file of "
                    "JudgeSpec fields; docs/judges.md)")
    elif others:
        message += f"; {option} is an option of kind {' / '.join(repr(k) for k in others)}"
    elif close:
        message += f"; did you mean {close[0]!r}?"
    raise TypeError(message)


def _construct(cls, checkpoint, name: str, **options):
    """``cls.from_pretrained`` with the options :func:`check_options` let through."""
    return cls.from_pretrained(checkpoint, name_or_path=name, **options)


def _load_on_vllm(cls, spec, checkpoint, name: str, device, dtype, vllm_args, options: dict):
    """The family built with its weights on the ``meta`` device, its model call on a new vLLM engine that starts
    only after the family's own checks (tokenizer, template, heads) have passed."""
    from .vllm import require_vllm
    from .vllm.backend import TRANSFORMERS_ONLY_OPTIONS, start_backend
    from .vllm.settings import on_cpu

    if not spec.vllm:
        raise ValueError(f"{name}: {spec.vllm_refusal}; load it with engine='transformers' (the default)")
    given = [option for option in TRANSFORMERS_ONLY_OPTIONS if options.get(option) is not None]
    if given:
        raise ValueError(f"{given} are options of the transformers engine; with engine='vllm' pass vLLM's own in "
                         "vllm_args={...} (e.g. max_num_batched_tokens, tensor_parallel_size)")
    if device is not None:
        raise ValueError(f"device={device!r}: with engine='vllm', vLLM places the model itself; drop device, "
                         "and set vLLM's placement in vllm_args (e.g. tensor_parallel_size)")
    require_vllm()
    for option in TRANSFORMERS_ONLY_OPTIONS:
        options.pop(option, None)
    asynchronous = bool(options.pop("asynchronous", False))
    dtype = resolve_dtype(dtype, "cpu" if on_cpu() else "cuda")
    logger.info("loading %s as kind %r (from %s) on vLLM (%s)", name, checkpoint.kind, checkpoint.source,
                str(dtype).replace("torch.", ""))
    family_args = cls.vllm_engine_args(checkpoint, name)

    def start(backbone, pad_token_id, causal=True):
        return start_backend(checkpoint, family_args, name_or_path=name, dtype=dtype, vllm_args=vllm_args,
                             asynchronous=asynchronous)

    rm = _construct(cls, checkpoint, name, device="meta", dtype=dtype, backend=start, **options)
    limit = rm.backend.max_model_len()
    if rm.max_length > limit:  # truncate where vLLM would refuse (warned on first use, as any truncation)
        logger.info("%s: max_length %d -> %d, vLLM's max_model_len", name, rm.max_length, limit)
        rm.max_length = limit
    return rm
