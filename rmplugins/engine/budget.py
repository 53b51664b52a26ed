"""The engine's sizes in one place: how many tokens one forward may take, what a token costs in memory, how many
prefix caches stay alive, and the cost model's constants (what one more forward is worth in tokens)."""

from __future__ import annotations

import torch

# One forward's token budget (padded tokens)
DEFAULT_CPU_TOKEN_BUDGET = 4096  # at most this on CPU: larger forwards are not faster there (bench_curves.py)
MIN_TOKEN_BUDGET = 256
MAX_TOKEN_BUDGET = 131072
GPU_MEMORY_FRACTION = 0.6   # of the free memory given to one micro-batch's activations and caches
CPU_MEMORY_FRACTION = 0.25  # of the free RAM, on CPU (shared with everything else the machine runs)

# Prefix caches alive at once
WINDOW_FACTOR = 8           # within a call: the prefix groups of one window hold at most WINDOW_FACTOR x budget tokens
KEEP_FACTOR = 8             # across calls (keep_prefixes): at most KEEP_FACTOR x budget tokens
PROMPT_CACHE_MEMORY_FRACTION = 0.1  # the server's default prompt cache: a tenth of the memory free at start
MAX_PROMPT_CACHE_TOKENS = 1 << 20

# The cost model (padded-token equivalents)
CPU_FORWARD_OVERHEAD = 64   # one more forward, when choosing micro-batches
GPU_FORWARD_OVERHEAD = 2048
CACHE_FACTOR = 4            # a suffix batch's expanded prefix cache is bounded by CACHE_FACTOR x budget tokens
MAX_ROWS = 512              # rows per micro-batch
MIN_SAVED_TOKENS = 32       # a group shares a prefix only when it saves at least this many tokens
GROUP_OVERHEAD_TOKENS = 16  # one more forward of a prefix group, when choosing between groupings


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes one token's keys and values take in every layer."""
    h = int(getattr(config, "hidden_size", 4096))
    heads = int(getattr(config, "num_attention_heads", 32))
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    return 2 * int(getattr(config, "num_hidden_layers", 32)) * kv * torch.empty(0, dtype=dtype).element_size()


def activation_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Rough peak bytes one token costs in a forward: the transient activations of one layer (residual, q/k/v,
    attention output, the MLP's gate/up/act) plus its keys/values in every layer (the prefix cache)."""
    h = int(getattr(config, "hidden_size", 4096))
    inter = int(getattr(config, "intermediate_size", None) or 4 * h)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return itemsize * (6 * h + 3 * inter) + kv_bytes_per_token(config, dtype)


def free_memory(device: torch.device) -> int:
    """Bytes free now where the model runs: the device's on CUDA, RAM elsewhere."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def auto_budget(device: torch.device, config, dtype: torch.dtype) -> int:
    """What one forward's activations and prefix caches may take (``activation_bytes_per_token``): a share of the
    device's free memory on CUDA; of the free RAM elsewhere, at most ``DEFAULT_CPU_TOKEN_BUDGET`` tokens there."""
    cuda = device.type == "cuda"
    fraction, cap = (GPU_MEMORY_FRACTION, MAX_TOKEN_BUDGET) if cuda else (CPU_MEMORY_FRACTION,
                                                                          DEFAULT_CPU_TOKEN_BUDGET)
    budget = int(free_memory(device) * fraction / activation_bytes_per_token(config, dtype)) // 256 * 256
    return max(MIN_TOKEN_BUDGET, min(cap, budget))


def forward_overhead(device: torch.device) -> int:
    return GPU_FORWARD_OVERHEAD if device.type == "cuda" else CPU_FORWARD_OVERHEAD


def auto_prompt_cache_tokens(device: torch.device, config, dtype: torch.dtype) -> int:
    """Tokens whose keys/values fit in ``PROMPT_CACHE_MEMORY_FRACTION`` of the memory free now, at most
    ``MAX_PROMPT_CACHE_TOKENS``."""
    per_token = kv_bytes_per_token(config, dtype)
    return int(min(MAX_PROMPT_CACHE_TOKENS, free_memory(device) * PROMPT_CACHE_MEMORY_FRACTION // per_token))
