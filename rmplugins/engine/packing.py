"""Cutting rows into micro-batches: a pure function of the rows' widths, the token budget and the per-forward
overhead (the engine passes its own), so it is testable and reusable on its own."""

from __future__ import annotations

from collections.abc import Callable

from .budget import CACHE_FACTOR, MAX_ROWS


def pack(items: list, width: Callable, budget: int, overhead: int, extra: Callable | None = None,
         max_rows: int = MAX_ROWS) -> list[list]:
    """Items sorted by ``width`` (longest first) and cut into micro-batches of at most ``budget`` padded tokens
    (with ``extra``, a prefix-cache length: also at most ``CACHE_FACTOR * budget`` attended tokens).

    Where to cut is chosen by a small dynamic programme minimising padded tokens plus ``overhead`` per forward, so
    a batch never pads a 10-token candidate to 300 just because the budget had room: on CPU padding is paid in
    full, and on GPU a few larger forwards beat many tiny ones (larger overhead there).
    """
    order = sorted(items, key=width, reverse=True)
    w = [width(i) for i in order]
    e = [extra(i) for i in order] if extra else [0] * len(order)
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest packing of order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest_extra = 0
        for i in range(j - 1, max(-1, j - 1 - max_rows), -1):  # the batch order[i:j] is w[i] wide
            longest_extra = max(longest_extra, e[i])
            rows = j - i
            if rows > 1 and (rows * w[i] > budget
                             or (extra and rows * (w[i] + longest_extra) > CACHE_FACTOR * budget)):
                break
            cost = best[i] + rows * w[i] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], n
    while j > 0:
        out.append(order[cut[j]: j])
        j = cut[j]
    return out[::-1]
