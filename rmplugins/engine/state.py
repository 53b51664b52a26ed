"""What the engine keeps: one call's state while it runs (:class:`CallState`), and what all calls did, in tokens
(:class:`EngineStats`: the accounting behind the benchmarks' ratios and the server's ``/metrics``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .worker import KV


@dataclass
class EngineStats:
    """Token accounting, cumulative over calls (``engine.stats.reset()`` to start again).

    ``tokens_requested``: the sum of the sequence lengths, what one forward per sequence processes;
    ``tokens_floor``: the unique-token floor (each distinct prefix once, see ``prefix.unique_token_floor``);
    ``tokens_processed``: real tokens that went through the backbone; ``tokens_padded``: rows x width summed over
    forwards, the compute actually spent (padding included); ``prefix_cache_hits``: prefixes taken from an earlier
    call's cache (``keep_prefixes`` or the prompt cache) instead of being run again, ``tokens_from_cache`` their
    tokens.
    """

    calls: int = 0
    sequences: int = 0
    forwards: int = 0
    tokens_requested: int = 0
    tokens_floor: int = 0
    tokens_processed: int = 0
    tokens_padded: int = 0
    prefix_groups: int = 0
    prefix_members: int = 0
    oom_splits: int = 0
    prefix_cache_hits: int = 0
    tokens_from_cache: int = 0

    def reset(self) -> None:
        for name in asdict(self):
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def restore(self, counted: dict[str, int]) -> None:
        """Back to ``counted`` (an earlier ``as_dict()``): calls since then were not the caller's (a warm-up, a
        start-up probe)."""
        for name, value in counted.items():
            setattr(self, name, value)


@dataclass
class CallState:
    """One ``hidden_at`` call: the distinct sequences, the sorted positions read in each, their hidden states as
    they are computed; and, for the window of prefix groups being run, each group's prefix cache and the hidden
    states read inside the prefix."""

    uniq: list[list[int]]
    wanted: list[list[int]]
    hidden: list[torch.Tensor | None]
    caches: dict[int, KV] = field(default_factory=dict)
    prefix_hidden: dict[int, tuple[list[int], torch.Tensor | None]] = field(default_factory=dict)
