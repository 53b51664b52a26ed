"""Finding shared token prefixes among the sequences of one scoring call.

A causal model's keys, values and hidden states at positions ``[0, p)`` depend only on those ``p`` tokens, so any
*token-level* common prefix can be computed once and its cache reused by every sequence that starts with it. The
grouping works on token ids, never on text: when a chat template or a BPE merge across the prompt/response
boundary changes the tokens, the common prefix is simply shorter (down to nothing) and the plan falls back to
running the whole sequence, so prefix reuse can never change what the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from .budget import GROUP_OVERHEAD_TOKENS, MIN_SAVED_TOKENS

_MAX_DEPTH = 64


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def unique_token_floor(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens a causal model must process at the very least: the nodes of the token trie of ``sequences``
    (each distinct prefix once; for n candidates of one prompt, the prompt once plus each candidate once)."""
    ordered = sorted({tuple(s) for s in sequences})
    total = sum(len(s) for s in ordered)
    return total - sum(common_prefix_len(a, b) for a, b in pairwise(ordered))


@dataclass
class PrefixGroup:
    """``members`` (indices into the planned sequences) share their first ``prefix_len`` tokens; ``prefix_len``
    is 0 for a sequence run on its own. Every member is strictly longer than the prefix."""

    prefix_len: int
    members: list[int]


def plan_groups(sequences: Sequence[Sequence[int]], min_saved: int = MIN_SAVED_TOKENS,
                overhead: int = GROUP_OVERHEAD_TOKENS) -> list[PrefixGroup]:
    """Partition distinct ``sequences`` into prefix groups minimising the tokens processed.

    Sorting the sequences puts every set sharing a prefix in one contiguous run, and the longest common prefix of
    a run is the minimum of the adjacent LCPs in it. A run is either one group (its LCP computed once) or split
    where that minimum occurs, each part choosing again with its longer LCP (a dynamic programme over the
    Cartesian tree of the LCP array): e.g. pair-PM prompts sharing one context form a single group, while
    pointwise groups of different prompts that only share a chat header split into one group per prompt.
    """
    order = sorted(range(len(sequences)), key=lambda i: tuple(sequences[i]))
    lcp = [common_prefix_len(sequences[a], sequences[b]) for a, b in pairwise(order)]
    lengths = [len(sequences[i]) for i in order]

    def solve(lo: int, hi: int, depth: int) -> tuple[int, list[tuple[int, int, int]]]:
        """(cost, [(lo, hi, prefix_len)]) for the sorted run ``order[lo:hi]``."""
        if hi - lo == 1:
            return lengths[lo] + overhead, [(lo, hi, 0)]
        shared = min(min(lcp[lo: hi - 1]), min(lengths[lo:hi]) - 1)
        size = hi - lo
        whole_cost = shared + sum(lengths[lo:hi]) - size * shared + 2 * overhead
        whole = (whole_cost, [(lo, hi, shared)]) if shared * (size - 1) >= min_saved else None
        if depth >= _MAX_DEPTH:
            split = None
        else:
            cut = min(lcp[lo: hi - 1])
            parts, start = [], lo
            for k in range(lo, hi - 1):
                if lcp[k] == cut:
                    parts.append((start, k + 1))
                    start = k + 1
            parts.append((start, hi))
            cost, plan = 0, []
            for a, b in parts:
                c, p = solve(a, b, depth + 1)
                cost += c
                plan += p
            split = (cost, plan)
        options = [o for o in (whole, split) if o is not None]
        if not options:
            return sum(lengths[lo:hi]) + size * overhead, [(k, k + 1, 0) for k in range(lo, hi)]
        return min(options, key=lambda o: o[0])

    if not sequences:
        return []
    _, plan = solve(0, len(order), 0)
    return [PrefixGroup(p, [order[k] for k in range(lo, hi)]) for lo, hi, p in plan]


# What a layer keeps of the tokens before it, by transformers' ``layer_types`` (cache_utils'
# DYNAMIC_LAYER_TYPE_MAPPING): only these are keys and values a continuation can attend to.
KEYS_AND_VALUES = {"full_attention", "sliding_attention"}


def keys_and_values_only(config) -> bool:
    """Every layer of the backbone's (text) config keeps keys and values (no ``layer_types``: full attention). A
    hybrid backbone (Qwen3.5 and Qwen3-Next's gated delta rule, Jamba's and Zamba's Mamba, LFM2's convolutions)
    carries a recurrent state through the sequence instead, which a prefix's keys and values do not hold: its
    sequences run whole."""
    return set(getattr(config, "layer_types", None) or ["full_attention"]) <= KEYS_AND_VALUES
