"""Both scoring engines for the family parity tests: every parity fixture is parametrized over ``ENGINES``, so the
reference checks run on rmplugins' transformers engine and on vLLM (``engine="vllm"``: vLLM's CPU build here, its
Llama/Mistral/Qwen/Gemma implementations, rmplugins' plugin for ArmoRM and GPM)."""

import pytest

from rmplugins import load_reward_model

ENGINES = ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)]
# small engines: 256 MiB of KV cache each, no torch.compile (start-up time), float32 as the references
VLLM_TEST_ARGS = {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": True}


def load(path, engine: str, **options):
    if engine == "vllm":
        return load_reward_model(path, engine="vllm", dtype="float32", vllm_args=dict(VLLM_TEST_ARGS), **options)
    return load_reward_model(path, dtype="float32", device="cpu", **options)


def close(rm) -> None:
    """End a vLLM engine at the end of its module (its memory); nothing to do for the transformers engine."""
    rm.shutdown()


def both(kinds):
    """(kind, engine) fixture parameters, with readable ids such as ``armorm-vllm``."""
    return [pytest.param((k, e.values[0] if hasattr(e, "values") else e), id=f"{k}-{getattr(e, 'values', [e])[0]}",
                         marks=getattr(e, "marks", ())) for k in kinds for e in ENGINES]
