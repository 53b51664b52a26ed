"""Prefix caches kept across calls: within ``ScoringEngine.keep_prefixes`` blocks (the rounds of a tournament) or
for good as the engine's prompt cache (a server's samples of one prompt arriving in different batches)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class KeptPrefix:
    """A prefix's keys/values ``[1, kv_heads, length, head_dim]`` per layer, and its final hidden states at the
    positions that were read when it ran."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    hidden: dict[int, torch.Tensor]


class KeptPrefixes:
    """Prefix caches kept across calls: within ``ScoringEngine.keep_prefixes`` blocks (cleared when the outermost
    exits), or for good as the engine's prompt cache (``prompt_cache_tokens``). Least recently used dropped first,
    bounded in tokens. A kept sequence serves any later one that starts with the same tokens for as long as they
    agree (its keys/values sliced there), found through a hash chain over blocks of ``BLOCK`` tokens."""

    BLOCK = 16

    def __init__(self):
        self.depth = 0           # open keep_prefixes blocks
        self.limit = 0           # prompt cache: tokens kept for good (0: off)
        self.suspended = 0       # deterministic calls: nothing kept or taken
        self.tokens = 0          # tokens held
        self._store: OrderedDict[tuple[int, ...], KeptPrefix] = OrderedDict()
        self._index: dict[int, tuple[int, ...]] = {}  # chain hash of a block-aligned prefix -> newest kept holder

    @property
    def active(self) -> bool:
        return (self.depth > 0 or self.limit > 0) and not self.suspended

    def __iter__(self):
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()
        self._index.clear()
        self.tokens = 0

    def _chain(self, tokens) -> list[int]:
        """Hashes of tokens[:BLOCK], tokens[:2*BLOCK], ... (each block chained on the hash before it)."""
        out, h = [], 0
        for start in range(0, len(tokens) - self.BLOCK + 1, self.BLOCK):
            h = hash((h, tuple(tokens[start: start + self.BLOCK])))
            out.append(h)
        return out

    def keep(self, tokens: tuple[int, ...], kv, positions: list[int], hidden: torch.Tensor, limit: int) -> None:
        """Copy a prefix's cache out of its batch (so the batch can be freed); drop the oldest beyond ``limit``
        tokens (the newest is always kept)."""
        if tokens in self._store:
            self._drop(tokens)
        self._store[tokens] = KeptPrefix([(k.clone(), v.clone()) for k, v in kv],
                                         {q: hidden[i].clone() for i, q in enumerate(positions)})
        self.tokens += len(tokens)
        for h in self._chain(tokens):
            self._index[h] = tokens
        while self.tokens > limit and len(self._store) > 1:
            self._drop(next(iter(self._store)))

    def _drop(self, tokens: tuple[int, ...]) -> None:
        del self._store[tokens]
        self.tokens -= len(tokens)
        for h in self._chain(tokens):
            if self._index.get(h) == tokens:
                del self._index[h]

    def longest(self, seq: Sequence[int], max_len: int) -> tuple[tuple[int, ...], int] | None:
        """(kept tokens, n): the kept sequence agreeing with ``seq`` on the most leading tokens, n of them
        (at least one block, at most ``max_len``); None when none agrees on a whole block."""
        best = None
        for j, h in enumerate(self._chain(seq[:max_len]), start=1):
            holder = self._index.get(h)
            if holder is None:
                break
            best = (holder, j * self.BLOCK)
        if best is None:
            return None
        holder, n = best
        if tuple(seq[:n]) != holder[:n]:  # a hash collision: take nothing rather than risk other tokens
            return None
        limit = min(max_len, len(holder), len(seq))
        while n < limit and seq[n] == holder[n]:
            n += 1
        return holder, n

    def take(self, seq: Sequence[int], max_len: int, wanted: set[int]):
        """``(n, keys/values cut to n tokens, the read positions below n, their hidden states or None)`` from the kept
        sequence agreeing longest with ``seq`` (see :meth:`longest`), marked as recently used; None when none agrees
        on a block, or a position in ``wanted`` below n was not kept."""
        found = self.longest(seq, max_len)
        if found is None:
            return None
        holder, n = found
        kept = self._store[holder]
        inside = sorted(q for q in wanted if q < n)
        if any(q not in kept.hidden for q in inside):
            return None
        self._store.move_to_end(holder)
        kv = [(key[:, :, :n], value[:, :, :n]) for key, value in kept.kv]
        return n, kv, inside, torch.stack([kept.hidden[q] for q in inside]) if inside else None
