"""Matmul shapes that repeat from call to call: a CPU forward's row length rounded up to a grid.

On a CPU in half precision PyTorch multiplies matrices with oneDNN, which builds a kernel (a "primitive", 3-7 ms on 2
cores) for every row count it has not seen, and keeps it for the next call of that count: a forward of a
Qwen3-0.6B-shaped model builds five (one per distinct linear layer), and five more for each thread count it runs with
(:mod:`.threads`); short rows also run faster a multiple of 16 long (351 tokens 6-9 % slower than 352). Reward calls
almost never repeat a length, and a call of a new one took 1.05-1.32x the median time of a repeated one, the most for
the shortest rows (``benchmarks/bench_shapes.py``, 350-1,100 tokens). Rows shorter than :data:`ROUND_BELOW` tokens are
therefore run :func:`rounded` up to a grid of 1/16 of their power of two (at least 16 tokens) by a filler piece that
attends only within itself and is never read: at most a 16th more tokens (15 below 256), about a 32nd on average, and a
later call of a nearby length finds its kernels built (1.00-1.06x). Longer rows take seconds, where neither shows
(measured at 2,883 tokens). The last layer's read rows (:mod:`.read_positions`) are rounded the same way.

Float32 multiplies with MKL, which builds nothing per shape: never rounded. On a GPU neither.
"""

from __future__ import annotations

import torch

ROUND_BELOW = 2048  # rows at least this long are run as they are
GRID_PARTS = 16     # the grid: a 16th of the row length's power of two
MIN_GRID = 16


def rounds(device: torch.device, dtype: torch.dtype) -> bool:
    """Where matmul kernels are built per row count (oneDNN: CPU, half precision)."""
    return device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)


def rounded(tokens: int, limit: int | None = None) -> int:
    """``tokens`` rounded up to the grid, never past ``limit`` (a forward's token budget) where that is larger."""
    if tokens <= 0 or tokens >= ROUND_BELOW:
        return tokens
    grid = max(MIN_GRID, (1 << (tokens.bit_length() - 1)) // GRID_PARTS)
    up = -(-tokens // grid) * grid
    return min(up, max(tokens, limit)) if limit is not None else up
