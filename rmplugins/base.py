"""The public face shared by every family: ``score``, ``compare``, ``rank`` (contract.md).

A family subclasses one of three bases and implements a per-row encoding (which may raise with the row's reason)
and one batched model call over encoded rows, made on its backend (``self.backend``: rmplugins' engine,
:class:`rmplugins.engine.ScoringEngine`, or vLLM, :class:`rmplugins.vllm.backend.VLLMBackend`):
- :class:`PointwiseRewardModel` -> ``encode_row(conversation)`` and ``forward_rows(encoded)`` (a reward per row,
  plus named extras such as ArmoRM's objectives);
- :class:`PairwiseRewardModel` -> ``encode_pair(a, b)`` and ``pair_probs(encoded)`` (P(a beats b) per pair);
- GPM implements ``encode_pair``/``pair_probs`` and ``rank_many`` itself (embeddings, then cheap products).

The base encodes row by row and makes one model call for the rows that encoded: ``score_rows`` and
``compare_rows`` give every row its score or its reason (the server and the TRL reward function use them, so one
bad row never fails or re-runs its batch); ``score`` and ``compare`` raise on the first bad row. In
deterministic mode each encoded row runs alone (``_batched``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .engine import ScoringEngine
from .finite import check_finite
from .inputs import Conversation, check_lists, split_sizes, to_conversation, to_conversations
from .ranking import PLANS, Ranking, expand_duplicates, from_scores, play_together, unique_candidates
from .refusals import NO_VERDICT, UNREADABLE, kind_of

logger = logging.getLogger("rmplugins")


@dataclass
class RowScores:
    """One entry per row: ``scores[i]`` (None where row i could not be scored), ``reasons[i]`` why and ``kinds[i]``
    what kind of refusal (:mod:`rmplugins.refusals`); ``extras`` are named per-row values beyond the score (ArmoRM:
    ``rewards`` and ``coefficients``, 19 each; None for a failed row)."""

    scores: list[float | None]
    reasons: dict[int, str]
    extras: dict[str, list]
    kinds: dict[int, str] = field(default_factory=dict)

    @classmethod
    def place(cls, n: int, ok: list[int], out: dict[str, torch.Tensor], reasons: dict[int, str],
              kinds: dict[int, str]) -> "RowScores":
        """Spread a batched call's outputs over the rows ``ok`` of ``n``; a NaN score (a generating judge gave no
        verdict: the only NaN that gets past ``_batched``) becomes None with that reason."""
        scores: list[float | None] = [None] * n
        reasons, kinds = dict(reasons), dict(kinds)
        extras: dict[str, list] = {name: [None] * n for name in out if name != "score"}
        for j, i in enumerate(ok):
            value = float(out["score"][j])
            if value != value:
                reasons[i] = "the judge gave no verdict (its answer did not hold one; the log has the answer's end)"
                kinds[i] = NO_VERDICT
                continue
            scores[i] = value
            for name in extras:
                extras[name][i] = out[name][j]
        return cls(scores, reasons, extras, kinds)


Backend = Any  # ScoringEngine or VLLMBackend: name, device, dtype, keep_prefixes, without_kept_prefixes, to, ...
BackendFactory = Callable[..., Backend]  # (backbone, pad_token_id, causal) -> the backend the family calls


def engine_backend(token_budget: int | None = None) -> BackendFactory:
    """The default backend: rmplugins' engine over the family's backbone (``token_budget``: padded tokens per
    forward, None for the memory-derived default)."""
    def make(backbone: torch.nn.Module, pad_token_id: int, causal: bool = True) -> ScoringEngine:
        return ScoringEngine(backbone, pad_token_id, causal=causal, token_budget=token_budget)
    return make


class RewardModel:
    kind: str = ""
    pointwise: bool = False
    rank_methods: tuple[str, ...] = ("score",)
    nan_is_no_verdict: bool = False  # a NaN score means "no verdict" (a generating judge), not a broken forward

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name_or_path: str, max_length: int):
        """The family's ``__init__`` ends with ``self.backend = backend(backbone, pad_token_id, causal)`` (the
        backend factory given to ``from_pretrained``, :func:`engine_backend` by default): a vLLM engine starts only
        once every check of the family has passed."""
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

    # ---------------------------------------------------------------- device and backend
    @property
    def device(self) -> torch.device:
        """Where the model's results come from (CPU for a model on vLLM, whose weights live in its workers)."""
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def engine(self) -> ScoringEngine | None:
        """rmplugins' engine when the model runs on it (its stats, budget, prompt cache); None on vLLM."""
        return self.backend if isinstance(self.backend, ScoringEngine) else None

    def to(self, device: str | torch.device) -> "RewardModel":
        """Move the model (co-location: park it on CPU while the policy trains, bring it back to score); refused
        on vLLM, which places its weights itself."""
        self.backend.to(device)
        self.model.to(device)
        return self

    def shutdown(self) -> None:
        """End the backend's engine now (a vLLM engine's memory and processes); nothing to do on rmplugins'."""
        self.backend.shutdown()

    def metrics(self) -> dict:
        """What the model itself counts, for the server's ``/metrics`` (a judge: verdicts given and missing)."""
        return {}

    # ---------------------------------------------------------------- public API
    def score(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[float]:
        raise TypeError(
            f"kind {self.kind!r} is a preference model without a pointwise reward: use "
            "rm.compare(prompts, completions_a, completions_b) for P(a beats b) or rm.rank(prompt, candidates) "
            "to score a group of candidates against each other"
        )

    def score_rows(self, prompts: Sequence[Any], completions: Sequence[Any]) -> RowScores:
        return self.score(prompts, completions)  # the same TypeError: rows of a pointwise reward

    def score_details(self, prompts: Sequence[Any], completions: Sequence[Any]):
        raise TypeError(f"score_details is only available for kind 'armorm', not {self.kind!r}")

    def compare(self, prompts: Sequence[Any], completions_a: Sequence[Any], completions_b: Sequence[Any]
                ) -> list[float | None]:
        """P(a beats b) per row (None where a generating judge gave no verdict)."""
        convs_a, convs_b = to_conversations(prompts, completions_a, completions_b)
        return _none_for_nan(self.win_probs(convs_a, convs_b).tolist())

    def compare_rows(self, prompts: Sequence[Any], completions_a: Sequence[Any], completions_b: Sequence[Any]
                     ) -> RowScores:
        """``compare``, row by row: a row that cannot be judged (bad input, a format the model cannot render) gets
        None and its reason; the other rows are judged in one batched call."""
        check_lists(prompts, completions_a, completions_b)

        def encode(i):
            return self.encode_pair(to_conversation(prompts[i], completions_a[i], i),
                                    to_conversation(prompts[i], completions_b[i], i))

        ok, encoded, reasons, kinds = self._encode_rows(len(prompts), encode)
        probs = self._batched(self.pair_probs, encoded) if encoded else torch.zeros(0)
        return RowScores.place(len(prompts), ok, {"score": probs}, reasons, kinds)

    def win_probs(self, convs_a: Sequence[Conversation], convs_b: Sequence[Conversation]) -> torch.Tensor:
        """float32 CPU tensor [N]: P(a_i beats b_i) for pairs sharing a context (raises on the first pair that
        cannot be encoded)."""
        if not len(convs_a):
            return torch.zeros(0)
        return self._batched(self.pair_probs, [self.encode_pair(a, b) for a, b in zip(convs_a, convs_b)])

    # ---------------------------------------------------------------- what each family implements
    def encode_pair(self, a: Conversation, b: Conversation) -> Any:
        """What the model needs to judge ``a`` against ``b`` (token ids, positions); raises ValueError with the
        reason when the pair cannot be rendered."""
        raise NotImplementedError

    def pair_probs(self, encoded_pairs: list) -> torch.Tensor:
        """float32 CPU tensor [N]: P(a beats b) for encoded pairs, in one batched model call."""
        raise NotImplementedError

    def check_group(self, prompt: Any, candidates: Sequence[Any]) -> ValueError | None:
        """Why ``rank(prompt, candidates)`` would fail on its input (the error: its message says why, its kind
        which refusal), or None: every candidate is encoded against the first (tokenization only, no forward), so a
        group that cannot be ranked is known before the model call that ranks the others."""
        try:
            convs = self._candidates(prompt, candidates)
            for other in convs[1:] or convs:
                self.encode_pair(convs[0], other)
        except ValueError as err:
            return err
        return None

    def rank(self, prompt: Any, candidates: Sequence[Any], method: str | None = None) -> Ranking:
        return self.rank_many([prompt], [candidates], method)[0]

    def rank_many(self, prompts: Sequence[Any], candidate_lists: Sequence[Sequence[Any]],
                  method: str | None = None) -> list[Ranking]:
        """``[rank(p, c, method) for p, c in zip(prompts, candidate_lists)]``, with the model calls of all groups
        batched together (for a tournament: one call per round for all prompts). Each family implements it."""
        raise NotImplementedError

    def rank_rows(self, prompts: Sequence[Any], candidate_lists: Sequence[Sequence[Any]],
                  method: str | None = None) -> list[Ranking | ValueError]:
        """``rank_many``, and where a group cannot be ranked (a generating judge that gave no verdict for any pair,
        an undecided tournament match), that group's ValueError in its place: the groups are then ranked one by
        one, so one group never fails the others (the TRL reward function and the recipes use it)."""
        try:
            return self.rank_many(prompts, candidate_lists, method)
        except ValueError:
            pass
        out: list[Ranking | ValueError] = []
        for prompt, candidates in zip(prompts, candidate_lists):
            try:
                out.append(self.rank(prompt, candidates, method))
            except ValueError as err:
                out.append(err)
        return out

    # ---------------------------------------------------------------- helpers for families
    def _batched(self, forward, rows: list):
        """``forward(rows)`` (a family's batched model call over encoded rows), or, in deterministic mode,
        ``forward`` on each distinct row alone, concatenated in order. Returns what ``forward`` returns (a tensor,
        a tuple or a dict of tensors) with one leading row per input row, every value finite (:mod:`.finite`)."""
        if not self.deterministic:
            out = forward(rows)
        else:
            with self.backend.without_kept_prefixes():
                out = self._each_alone(forward, rows)
        check_finite(out, model=f"the {self.kind} model {self.name_or_path!r}", dtype=self.dtype,
                     nan_allowed=self.nan_is_no_verdict)
        return out

    @staticmethod
    def _each_alone(forward, rows: list):
        if len(rows) <= 1:
            return forward(rows)
        keys = [repr(row) for row in rows]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        alone = {i: forward([rows[i]]) for i in first.values()}
        parts = [alone[first[key]] for key in keys]
        if isinstance(parts[0], dict):  # tensors concatenated; per-row lists (PRM step rewards) joined
            return {name: torch.cat([p[name] for p in parts]) if isinstance(parts[0][name], torch.Tensor)
                    else [x for p in parts for x in p[name]] for name in parts[0]}
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(column) for column in zip(*parts))
        return torch.cat(parts)

    @staticmethod
    def _encode_rows(n: int, encode) -> tuple[list[int], list, dict[int, str], dict[int, str]]:
        """(rows that encoded, their encodings, the reason and the kind of each row that did not: its own where it
        was raised with one (too long), else unreadable: the model cannot read that conversation)."""
        ok, encoded, reasons, kinds = [], [], {}, {}
        for i in range(n):
            try:
                encoded.append(encode(i))
                ok.append(i)
            except ValueError as err:
                reasons[i], kinds[i] = str(err), kind_of(err, UNREADABLE)
        return ok, encoded, reasons, kinds

    @staticmethod
    def _distinct_candidates(convs: list[Conversation]) -> tuple[list[Conversation], list[int]]:
        """The conversations with distinct responses (first seen kept) and, for each conversation, the index of
        its distinct one (``ranking.expand_duplicates`` spreads a ranking back)."""
        unique, back = unique_candidates([c.response for c in convs])
        first: dict[str, Conversation] = {}
        for c in convs:
            first.setdefault(c.response, c)
        return [first[r] for r in unique], back

    def _distinct_groups(self, prompts, candidate_lists) -> tuple[list[list[Conversation]], list[list[int]]]:
        """``rank_many``'s groups, checked, each with its identical candidates once (scored or judged once), and
        for each group where each candidate went (``ranking.expand_duplicates`` spreads a ranking back)."""
        if isinstance(prompts, (str, dict)) or isinstance(candidate_lists, (str, dict)):
            raise ValueError("rank_many takes a list of prompts and a list of candidate lists (one per prompt)")
        if len(prompts) != len(candidate_lists):
            raise ValueError(f"rank_many got {len(prompts)} prompts but {len(candidate_lists)} candidate lists; "
                             "give one list of candidates per prompt")
        pairs = [self._distinct_candidates(self._candidates(p, c)) for p, c in zip(prompts, candidate_lists)]
        return [distinct for distinct, _ in pairs], [back for _, back in pairs]

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

    def encode_row(self, conversation: Conversation) -> Any:
        """What the model reads for one conversation (token ids, positions); raises ValueError with the reason
        when it cannot be rendered. Each pointwise family implements it and :meth:`forward_rows`."""
        raise NotImplementedError

    def forward_rows(self, encoded: list) -> dict[str, torch.Tensor]:
        """One batched model call: ``{"score": float32 CPU [N], ...named per-row extras}``."""
        raise NotImplementedError

    def rewards(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """float32 CPU tensor [N] of rewards (raises on the first conversation that cannot be encoded)."""
        return self._forward([self.encode_row(c) for c in conversations])["score"]

    def _forward(self, encoded: list) -> dict[str, torch.Tensor]:
        return self._batched(self.forward_rows, encoded)

    def score(self, prompts, completions):
        """A reward per row (None where a generating judge gave no verdict)."""
        (convs,) = to_conversations(prompts, completions)
        return _none_for_nan(self.rewards(convs).tolist())

    def score_rows(self, prompts: Sequence[Any], completions: Sequence[Any]) -> RowScores:
        """``score``, row by row: a row that cannot be scored gets None and its reason; the others are scored in
        one batched call. ``extras`` holds the family's named per-row values (ArmoRM's objectives)."""
        check_lists(prompts, completions)
        ok, encoded, reasons, kinds = self._encode_rows(
            len(prompts), lambda i: self.encode_row(to_conversation(prompts[i], completions[i], i)))
        out = self._forward(encoded) if encoded else {"score": torch.zeros(0)}
        return RowScores.place(len(prompts), ok, out, reasons, kinds)

    def encode_pair(self, a, b):
        return self.encode_row(a), self.encode_row(b)

    def pair_probs(self, encoded_pairs):
        """sigmoid(r_a - r_b)."""
        n = len(encoded_pairs)
        r = self._forward([a for a, _ in encoded_pairs] + [b for _, b in encoded_pairs])["score"]
        return torch.sigmoid(r[:n] - r[n:])

    def rank_many(self, prompts, candidate_lists, method=None):
        self._check_method(method)
        groups, backs = self._distinct_groups(prompts, candidate_lists)
        rewards = self.rewards([c for g in groups for c in g]).tolist()  # one batched call for all groups
        return [expand_duplicates(from_scores(r, "score", 0), back)
                for r, back in zip(split_sizes(rewards, [len(g) for g in groups]), backs)]


class PairwiseRewardModel(RewardModel):
    """Families that only judge pairs (RLHFlow pair-PM, PairRM): they implement ``encode_pair`` and
    ``pair_probs``."""

    rank_methods = ("tournament", "round_robin")

    def rank_many(self, prompts, candidate_lists, method=None):
        """The groups' tournaments (or round robins) run in lockstep: each round of all of them is one batched
        model call, and the prefix caches are kept across the rounds (each context runs once)."""
        method = self._check_method(method)
        groups, backs = self._distinct_groups(prompts, candidate_lists)

        def judge_many(pending: dict[int, list[tuple[int, int]]]) -> dict[int, list[float]]:
            convs_a = [groups[g][i] for g, pairs in pending.items() for i, _ in pairs]
            convs_b = [groups[g][j] for g, pairs in pending.items() for _, j in pairs]
            probs = self.win_probs(convs_a, convs_b).tolist()
            return dict(zip(pending, split_sizes(probs, [len(pairs) for pairs in pending.values()])))

        plans = [PLANS[method](len(g)) for g in groups]
        # Kept prefixes change where a sequence is split into cached prefix and suffix: not in deterministic mode.
        with self.backend.keep_prefixes() if not self.deterministic else nullcontext():
            rankings = play_together(plans, judge_many)
        return [expand_duplicates(r, back) for r, back in zip(rankings, backs)]


def _none_for_nan(values: list[float]) -> list[float | None]:
    return [None if v != v else v for v in values]
