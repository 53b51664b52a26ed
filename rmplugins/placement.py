"""Where and how a model runs: the device (checked before any slow work: a CUDA device on a machine without one
is refused with what to do), the dtype, the attention kernel, and the keyword arguments a family's
``from_pretrained`` takes for them."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

logger = logging.getLogger("rmplugins")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: Any, option: str = "device") -> str:
    """``device`` as a string, when it names a device this machine has; otherwise a ValueError that names the
    option, the value and what to use instead (asked before anything slow starts: a CUDA device on a CPU-only
    machine would otherwise fail deep inside torch after the model has loaded)."""
    text = str(device).strip()
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{option} {text!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is the CPU build" if torch.version.cuda is None else
                   "no CUDA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
            raise ValueError(f"{option} {text}: this machine has no CUDA GPU that torch can use ({why}); use "
                             f"{option} cpu, or leave it unset to use a GPU when there is one")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{option} {text}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type not in ("cpu", "meta"):
        backend = getattr(torch, parsed.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"{option} {text}: torch cannot use a {parsed.type!r} device on this machine; use "
                             f"{option} cpu or cuda")
    return text


_HINTED_BF16 = []
_HINTED_SLOW_HALF = []


def cpu_has_fast_bf16() -> bool:
    """The CPU multiplies bf16 matrices in hardware (AMX tiles or AVX-512 BF16): there bf16 scoring runs several
    times faster than float32 (benchmarks/RESULTS.md, the engine at the machine's limit)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        try:
            if getattr(cpu, probe)():
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


MODEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_dtype(dtype: Any) -> torch.dtype | None:
    """The dtype asked for (None for the default), refused before any slow work unless a model can run in it: an
    integer or float8 dtype would otherwise fail inside transformers after the checkpoint was read."""
    if dtype is None or dtype == "auto":
        return None
    value = getattr(torch, dtype.replace("torch.", ""), None) if isinstance(dtype, str) else dtype
    if value not in MODEL_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one a model runs in; use 'float32', 'bfloat16' or 'float16' (or "
                         "leave it unset: bfloat16 on a GPU, float32 on CPU)")
    return value


def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    chosen = check_dtype(dtype)
    if chosen is None:
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if not _HINTED_BF16 and cpu_has_fast_bf16():
            _HINTED_BF16.append(True)
            logger.info("this CPU multiplies bf16 in hardware (AMX / AVX-512 BF16): dtype='bfloat16' scores 4-5x "
                        "faster than the float32 default, within bf16 rounding of its rewards; logged once")
        return torch.float32
    if chosen in (torch.bfloat16, torch.float16) and str(device).startswith("cpu") and not cpu_has_fast_bf16() \
            and not _HINTED_SLOW_HALF:
        _HINTED_SLOW_HALF.append(True)  # the README and --help say bf16 is faster on CPU: not on this one
        logger.warning("dtype %s on a CPU without AMX or AVX-512 BF16: its matrix products run in software here, "
                       "several times slower than float32 (bf16 7.6x, float16 6.2x on a 2-core AVX2 CPU); float32, "
                       "the CPU default, is faster and exact to the reference; logged once", str(chosen)[6:])
    return chosen


def default_attention(device: str, config: dict[str, Any] | None = None) -> str | None:
    """flash-attention 2 on CUDA when installed and the model's class takes it; else eager for a model whose
    attention logits are soft-capped (Gemma-2), which transformers' SDPA path ignores; else None: transformers'
    own choice, SDPA where the class supports it and eager where not (GPT-OSS's attention sinks)."""
    if (str(device).startswith("cuda") and importlib.util.find_spec("flash_attn") is not None
            and getattr(_model_class(config), "_supports_flash_attn", False)):
        return "flash_attention_2"
    return "eager" if soft_capped(config) else None


def _model_class(config: dict[str, Any] | None):
    """The transformers class the checkpoint names first in ``architectures`` (None when it names none there)."""
    import transformers

    names = (config or {}).get("architectures") or [None]
    return getattr(transformers, names[0], None) if isinstance(names[0], str) else None


def soft_capped(config: dict[str, Any] | None) -> bool:
    return bool((config or {}).get("attn_logit_softcapping"))


def check_attention(attn_implementation: str | None, config: dict[str, Any], name: Any) -> None:
    """Refuse an attention kernel that would compute a different model: transformers' SDPA path drops Gemma-2's
    attention soft-capping (tanh(logits / c) * c) without a word, which moves rewards by a few percent."""
    if attn_implementation == "sdpa" and soft_capped(config):
        raise ValueError(f"{name}: attn_implementation='sdpa' ignores this model's attention soft-capping "
                         f"(attn_logit_softcapping={config['attn_logit_softcapping']}), so its rewards would be "
                         "wrong; use 'eager' (the default here) or 'flash_attention_2' on a GPU")


def model_kwargs(device: str, dtype: torch.dtype, attn_implementation: str | None, device_map: Any) -> dict:
    """Keyword arguments for a family's ``from_pretrained``: dtype, attention kernel, and placement."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    kwargs["device_map"] = device_map if device_map is not None else device
    if kwargs["device_map"] == "meta":  # weights that never run (engine="vllm"): transformers 5.2x would fit the
        kwargs["use_kernels"] = False   # hub's kernels to them by default, and refuses to on the meta device
    return kwargs
