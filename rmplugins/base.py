"""The public face shared by every family: ``score``, ``compare``, ``rank`` (contract.md).

A family subclasses one of three bases and implements a single batched primitive:
- :class:`PointwiseRewardModel` -> ``rewards(conversations)`` (one float per conversation);
- :class:`PairwiseRewardModel` -> ``win_probs(convs_a, convs_b)`` (P(a beats b) per pair);
- GPM implements ``compare`` and ``rank`` itself (embeddings, then cheap products).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Sequence

import torch

from .inputs import Conversation, split_sizes, to_conversation, to_conversations
from .ranking import PLANS, Ranking, expand_duplicates, from_scores, play_together, unique_candidates

logger = logging.getLogger("rmplugins")


class RewardModel:
    kind: str = ""
    pointwise: bool = False
    rank_methods: tuple[str, ...] = ("score",)

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name_or_path: str, max_length: int):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name_or_path = str(name_or_path)
        self.max_length = int(max_length)
        self._warned_truncation = False
        # Batched float arithmetic depends on the batch: a matrix product over 1 row and over 7 rows, or causal
        # attention over a row padded to different widths, round differently (a few 1e-6 in float32). With
        # deterministic=True each row runs alone, so its numbers depend on that row only, bit for bit, whatever it
        # is scored with (the server's batches, a TRL group); it costs one forward per sequence (README: Scoring
        # determinism).
        self.deterministic = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, path={self.name_or_path!r}, device={self.device})"

    # ---------------------------------------------------------------- device
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device) -> "RewardModel":
        """Move the model (co-location: park it on CPU while the policy trains, bring it back to score)."""
        self.model.to(device)
        return self

    # ---------------------------------------------------------------- public API
    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        raise TypeError(
            f"kind {self.kind!r} is a preference model without a pointwise reward: use "
            "rm.compare(prompts, completions_a, completions_b) for P(a beats b) or rm.rank(prompt, candidates) "
            "to score a group of candidates against each other"
        )

    def score_details(self, prompts: Sequence[Any], completions: Sequence[Any]):
        raise TypeError(f"score_details is only available for kind 'armorm', not {self.kind!r}")

    def compare(self, prompts: Sequence[Any], completions_a: Sequence[Any], completions_b: Sequence[Any]
                ) -> list[float]:
        convs_a, convs_b = to_conversations(prompts, completions_a, completions_b)
        return self._batched(self.win_probs, convs_a, convs_b).tolist()

    def win_probs(self, convs_a: Sequence[Conversation], convs_b: Sequence[Conversation]) -> torch.Tensor:
        """float32 CPU tensor [N]: P(a_i beats b_i) for pairs sharing a context; each family defines it."""
        raise NotImplementedError

    def rank(self, prompt: Any, candidates: Sequence[Any], method: str | None = None) -> Ranking:
        return self.rank_many([prompt], [candidates], method)[0]

    def rank_many(self, prompts: Sequence[Any], candidate_lists: Sequence[Sequence[Any]],
                  method: str | None = None) -> list[Ranking]:
        """``[rank(p, c, method) for p, c in zip(prompts, candidate_lists)]``, with the model calls of all groups
        batched together (for a tournament: one call per round for all prompts). Each family implements it."""
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers for families
    def _batched(self, primitive, *columns: Sequence[Conversation]):
        """``primitive(*columns)`` (a family's batched model call over rows of conversations), or, in
        deterministic mode, the primitive on each distinct row alone, concatenated in order. Returns what the
        primitive returns: a tensor, or a tuple of tensors, with one leading row per input row."""
        n = len(columns[0])
        if not self.deterministic or n <= 1:
            return primitive(*columns)
        keys = [tuple((c.context, c.response) for c in row) for row in zip(*columns)]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(repr(key), i)
        alone = {i: primitive(*(col[i: i + 1] for col in columns)) for i in first.values()}
        parts = [alone[first[repr(key)]] for key in keys]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(column) for column in zip(*parts))
        return torch.cat(parts)

    @staticmethod
    def _distinct(convs: list[Conversation]) -> tuple[list[Conversation], list[int]]:
        """The conversations with distinct responses (first seen kept) and, for each conversation, the index of
        its distinct one (``ranking.expand_duplicates`` spreads a ranking back)."""
        unique, back = unique_candidates([c.response for c in convs])
        first: dict[str, Conversation] = {}
        for c in convs:
            first.setdefault(c.response, c)
        return [first[r] for r in unique], back

    def _check_groups(self, prompts, candidate_lists) -> None:
        if isinstance(prompts, (str, dict)) or isinstance(candidate_lists, (str, dict)):
            raise ValueError("rank_many takes a list of prompts and a list of candidate lists (one per prompt)")
        if len(prompts) != len(candidate_lists):
            raise ValueError(f"rank_many got {len(prompts)} prompts but {len(candidate_lists)} candidate lists; "
                             "give one list of candidates per prompt")

    def _check_method(self, method: str | None) -> str:
        method = method or self.rank_methods[0]
        if method not in self.rank_methods:
            raise ValueError(f"rank method {method!r} is not available for kind {self.kind!r}; "
                             f"choose one of {list(self.rank_methods)}")
        return method

    def _candidates(self, prompt: Any, candidates: Sequence[Any]) -> list[Conversation]:
        if isinstance(candidates, (str, dict)) or not isinstance(candidates, Sequence) or not candidates:
            raise ValueError("rank needs a non-empty list of candidate completions for one prompt")
        return [to_conversation(prompt, c, i) for i, c in enumerate(candidates)]

    def _truncate(self, ids: list[int], limit: int | None = None, side: str = "right") -> list[int]:
        """Cut ``ids`` to ``limit`` tokens, warning once per model (the reference pipelines truncate silently)."""
        limit = limit or self.max_length
        if len(ids) <= limit:
            return ids
        if not self._warned_truncation:
            logger.warning(
                "%s: a sequence of %d tokens exceeds max_length=%d and was truncated on the %s, as the "
                "reference code does; pass max_length=... to load_reward_model to change the limit "
                "(warned once)", self.kind, len(ids), limit, side)
            self._warned_truncation = True
        return ids[:limit] if side == "right" else ids[len(ids) - limit:]


class PointwiseRewardModel(RewardModel):
    """Families with a scalar reward per conversation (Bradley-Terry, ArmoRM)."""

    pointwise = True
    rank_methods = ("score",)

    def rewards(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """float32 CPU tensor [N] of rewards; the one primitive a pointwise family implements."""
        raise NotImplementedError

    def score(self, prompts, completions):
        (convs,) = to_conversations(prompts, completions)
        return self._batched(self.rewards, convs).tolist()

    def win_probs(self, convs_a, convs_b):
        """sigmoid(r_a - r_b)."""
        r = self._batched(self.rewards, list(convs_a) + list(convs_b))
        n = len(convs_a)
        return torch.sigmoid(r[:n] - r[n:])

    def rank_many(self, prompts, candidate_lists, method=None):
        self._check_method(method)
        self._check_groups(prompts, candidate_lists)
        groups, backs = [], []
        for prompt, candidates in zip(prompts, candidate_lists):
            distinct, back = self._distinct(self._candidates(prompt, candidates))  # identical ones scored once
            groups.append(distinct)
            backs.append(back)
        rewards = self._batched(self.rewards, [c for g in groups for c in g]).tolist()  # one call for all groups
        return [expand_duplicates(from_scores(r, "score", 0), back)
                for r, back in zip(split_sizes(rewards, [len(g) for g in groups]), backs)]


class PairwiseRewardModel(RewardModel):
    """Families that only judge pairs (RLHFlow pair-PM, PairRM)."""

    rank_methods = ("tournament", "round_robin")

    def rank_many(self, prompts, candidate_lists, method=None):
        """The groups' tournaments (or round robins) run in lockstep: each round of all of them is one batched
        model call, and the prefix caches are kept across the rounds (each context runs once)."""
        method = self._check_method(method)
        self._check_groups(prompts, candidate_lists)
        groups, backs = [], []
        for prompt, candidates in zip(prompts, candidate_lists):
            distinct, back = self._distinct(self._candidates(prompt, candidates))  # identical ones judged once
            groups.append(distinct)
            backs.append(back)

        def judge_many(pending: dict[int, list[tuple[int, int]]]) -> dict[int, list[float]]:
            convs_a = [groups[g][i] for g, pairs in pending.items() for i, _ in pairs]
            convs_b = [groups[g][j] for g, pairs in pending.items() for _, j in pairs]
            probs = self._batched(self.win_probs, convs_a, convs_b).tolist()
            return dict(zip(pending, split_sizes(probs, [len(pairs) for pairs in pending.values()])))

        plans = [PLANS[method](len(g)) for g in groups]
        engine = getattr(self, "engine", None)
        # Kept prefixes change where a sequence is split into cached prefix and suffix: not in deterministic mode.
        keep = engine is not None and not self.deterministic
        with engine.keep_prefixes() if keep else nullcontext():
            rankings = play_together(plans, judge_many)
        return [expand_duplicates(r, back) for r, back in zip(rankings, backs)]
