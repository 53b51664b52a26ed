"""Pair and selection rules of the recipes: pure functions over the scores of one prompt's candidates.

Every rule reads a :class:`~rmplugins.ranking.Ranking`-like triple (``scores``, ``best``, ``worst``) and returns
the chosen/rejected indices (DPO) or the kept index (rejection sampling), counting what it dropped and why in a
:class:`SelectionStats`:

- ``max-min`` (pointwise kinds ``bt``/``armorm``/``prm``; RLHFlow's rule): chosen = argmax reward, rejected = argmin;
  a group whose rewards are all equal has no preference and is dropped (``ties``); ``margin`` = the difference.
- ``margin``: ``max-min`` that also drops pairs whose margin is below ``min_margin`` (``below_margin``).
- ``tournament`` / ``round-robin`` (pairwise kinds ``pair_pm``/``pairrm``): chosen/rejected are the ranking's best
  and worst; scores are mean win probabilities, so the margin is their difference.
- ``gpo`` (``gpm``): argmax/argmin of the GPO score (1/n) Σ_j (s_ij − s_ji)/τ.
- ``best-of-n`` (rejection sampling): the best candidate; an all-tied group is kept (any candidate is as good as
  another) but counted in ``ties``.

A candidate a generating judge gave no verdict for (score None) is never chosen nor rejected.

A group with fewer than two distinct candidate texts cannot form a pair and is counted in ``degenerate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..judges import judge_spec
from ..registry import family
from .prompts import as_messages

PAIR_RULES = ("max-min", "margin", "tournament", "round-robin", "circular", "gpo")
# The ``rm.rank`` method each rule uses, and the ranking modes (rmplugins.registry.FamilySpec.mode) it applies to.
RANK_METHOD = {"max-min": "score", "margin": None, "tournament": "tournament", "round-robin": "round_robin",
               "circular": "circular", "gpo": "gpo", "best-of-n": None}
RULE_MODES = {"max-min": ("pointwise",), "margin": ("pointwise", "pairwise", "gpo"),
              "tournament": ("pairwise",), "round-robin": ("pairwise",), "circular": ("pairwise",), "gpo": ("gpo",)}
DEFAULT_RULE = {"pointwise": "max-min", "pairwise": "tournament", "gpo": "gpo"}


def ranking_mode(kind: str, judge=None) -> str:
    """How a model of ``kind`` ranks candidates (the registry's mode; a judge's from its spec)."""
    mode = family(kind).mode
    if mode == "judge":
        if judge is None:
            raise ValueError("a generative judge (kind 'genrm') needs its judge spec: --judge PRESET|FILE.json")
        return "pairwise" if judge_spec(judge).pairwise else "pointwise"
    return mode


def default_rule(kind: str, judge=None) -> str:
    """The rule a model uses unless told otherwise (round robin for pairwise judges: a generating judge may leave a
    pair undecided, which a tournament cannot take)."""
    mode = ranking_mode(kind, judge)
    return "round-robin" if mode == "pairwise" and kind == "genrm" else DEFAULT_RULE[mode]


def rank_method(rule: str, kind: str) -> str | None:
    """``method`` to pass to ``rm.rank`` for ``rule`` (None: the model's default)."""
    return RANK_METHOD[rule]


def check_rule(rule: str, kind: str, judge=None) -> None:
    if rule == "best-of-n":
        return
    if rule not in PAIR_RULES:
        raise ValueError(f"unknown pair rule {rule!r}; choose one of {list(PAIR_RULES)}")
    mode = ranking_mode(kind, judge)
    if mode not in RULE_MODES[rule]:
        raise ValueError(f"pair rule {rule!r} does not apply to a {kind!r} reward model ({mode}; the rule is for "
                         f"{' or '.join(RULE_MODES[rule])} models); use --pair-rule {default_rule(kind, judge)} or "
                         "leave it out")


@dataclass
class SelectionStats:
    """Counters of one selection pass; ``kept + ties + below_margin + degenerate == groups`` for pairs."""

    groups: int = 0
    kept: int = 0
    ties: int = 0
    below_margin: int = 0
    degenerate: int = 0
    comparisons: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Pair:
    chosen: int
    rejected: int
    chosen_score: float
    rejected_score: float

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score


def _count_distinct(candidates: Sequence[str]) -> int:
    return len(set(candidates))


def select_pair(candidates: Sequence[str], scores: Sequence[float], best: int, worst: int, *,
                rule: str = "max-min", min_margin: float = 0.0, stats: SelectionStats | None = None
                ) -> Pair | None:
    """Chosen/rejected for one prompt, or None when the group is dropped (counted in ``stats``).

    ``best``/``worst`` come from the ranking (for ``max-min``/``margin``/``gpo`` they are argmax/argmin of
    ``scores``, first index on ties; for tournaments they are the knockout winners).
    """
    stats = stats if stats is not None else SelectionStats()
    stats.groups += 1
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    scored = [i for i, s in enumerate(scores) if s is not None]  # a generating judge may give no verdict
    if len(scored) < 2 or _count_distinct([candidates[i] for i in scored]) < 2:
        stats.degenerate += 1
        return None
    if max(scores[i] for i in scored) == min(scores[i] for i in scored):  # exact tie: no preference
        stats.ties += 1
        return None
    if rule in ("max-min", "margin", "gpo"):
        best = max(scored, key=lambda i: (scores[i], -i))
        worst = min(scored, key=lambda i: (scores[i], i))
    if best == worst or candidates[best] == candidates[worst]:
        stats.degenerate += 1
        return None
    pair = Pair(best, worst, float(scores[best]), float(scores[worst]))
    if pair.margin <= 0.0:  # a tournament whose best and worst scored the same
        stats.ties += 1
        return None
    threshold = min_margin if rule == "margin" or min_margin else 0.0
    if threshold and pair.margin < threshold:
        stats.below_margin += 1
        return None
    stats.kept += 1
    return pair


def best_of_n(candidates: Sequence[str], scores: Sequence[float], best: int | None = None, *,
              stats: SelectionStats | None = None) -> int | None:
    """Index of the candidate to keep for rejection sampling (None only for an empty group)."""
    stats = stats if stats is not None else SelectionStats()
    stats.groups += 1
    scored = [i for i, s in enumerate(scores) if s is not None]  # a generating judge may give no verdict
    if not candidates or not scored:
        stats.degenerate += 1
        return None
    if best is None or scores[best] is None:
        best = max(scored, key=lambda i: (scores[i], -i))
    if len(scored) > 1 and max(scores[i] for i in scored) == min(scores[i] for i in scored):
        stats.ties += 1
    stats.kept += 1
    return best


def _completion(text: str, conversational: bool):
    return [{"role": "assistant", "content": text}] if conversational else text


def dpo_rows(prompt, texts: Sequence[str], pair: Pair, conversational: bool, templated: str = "") -> tuple[dict, dict]:
    """One kept pair as (TRL's DPO row, conversational when the prompts are; OpenRLHF <= 0.9's iter_dpo row, with
    the prompt in the policy's template)."""
    trl = {"prompt": as_messages(prompt) if conversational else prompt,
           "chosen": _completion(texts[pair.chosen], conversational),
           "rejected": _completion(texts[pair.rejected], conversational), "chosen_score": pair.chosen_score,
           "rejected_score": pair.rejected_score, "margin": pair.margin}
    openrlhf = {"prompt": templated, "chosen": texts[pair.chosen], "chosen_reward": pair.chosen_score,
                "rejected": texts[pair.rejected], "rejected_reward": pair.rejected_score}
    return trl, openrlhf


def sft_rows(prompt, text: str, score: float, conversational: bool, templated: str = "") -> tuple[dict, dict]:
    """The best of n as (TRL's prompt-completion row; OpenRLHF <= 0.9's rs row)."""
    trl = {"prompt": as_messages(prompt) if conversational else prompt,
           "completion": _completion(text, conversational), "score": score}
    return trl, {"input": templated, "output": text, "reward": score}
