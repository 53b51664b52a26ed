"""What transformers calls a forward's key/value cache: ``past_key_values`` (5.19 and before), ``cache`` (5.25; the
old name a deprecated alias until 5.40, with a warning). The engine hands a cache to the backbone, takes one from its
output and, in its fused attention, receives one from the decoder layer: each reads the name from here, so the
same code runs on every transformers from 5.0 on (a cache missed under the other name was a crash:
``tests/test_ragged_fused.py`` on transformers 5.25)."""

from __future__ import annotations

import inspect
from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPast


def cache_keyword(module: Any) -> str:
    """The keyword ``module.forward`` takes its cache by; for a forward taking only ``**kwargs`` (a wrapper), the
    one the installed transformers' models take."""
    params = inspect.signature(module.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def output_cache(output: Any) -> Any:
    """The cache a forward returned (``use_cache=True``), by whichever name its output class has."""
    if "cache" in getattr(output, "__dataclass_fields__", {}):
        return output.cache
    return output.past_key_values


def given_cache(past_key_values: Any, kwargs: dict) -> Any:
    """The cache a decoder layer passed to an attention forward that takes both names (``cache`` is popped from
    ``kwargs`` so that it is not passed on twice)."""
    cache = kwargs.pop("cache", None)
    return cache if cache is not None else past_key_values
