"""Ranking n candidates with a pairwise judge: a knockout tournament (best and worst in at most 2n - 3
comparisons), a full round robin, or a circle (each against the next, n comparisons: NeMo-Gym's genrm_compare). The
judge is any function that takes a batch of index pairs and returns P(first beats second) for each, so every round
of the tournament is one batched model call. A judge that can fail to give a verdict (a generating judge) answers
NaN for that pair: the round robin and the circle leave it out (a candidate left with no decided pair has the score
None), a tournament refuses it (each match must be decided).

Each method is written as a *plan*: a generator that yields the pairs it needs judged next and receives their
probabilities, returning the :class:`Ranking`. :func:`play` runs one plan against a judge; :func:`play_together`
runs the plans of many prompts in lockstep, so one round of all their tournaments is one model call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from .refusals import NO_VERDICT, Unscorable

PairJudge = Callable[[list[tuple[int, int]]], Sequence[float]]
Pairs = list[tuple[int, int]]
Plan = Generator[Pairs, Sequence[float], "Ranking"]


@dataclass
class Ranking:
    """Result of ``rm.rank``: one score per candidate (higher is better), the best and worst indices, and how
    many distinct candidate pairs the model judged (0 for pointwise kinds)."""

    scores: list[float | None]
    best: int
    worst: int
    comparisons: int = 0
    method: str = "score"
    wins: dict[tuple[int, int], float] = field(default_factory=dict, repr=False)

    def order(self) -> list[int]:
        """Candidate indices from best to worst by score (the tournament's best/worst first and last)."""
        rest = sorted(
            (i for i in range(len(self.scores)) if i not in (self.best, self.worst)),
            key=lambda i: -self.scores[i] if self.scores[i] is not None else float("inf"),
        )
        if self.best == self.worst:
            return [self.best, *rest]
        return [self.best, *rest, self.worst]


def from_scores(scores: Sequence[float | None], method: str = "score", comparisons: int = 0) -> Ranking:
    """Best and worst by score (ties to the earlier candidate); a None or NaN score (no verdict) is None in the
    ranking and never best or worst (NaN compares false with everything: kept, it would win any ``max``)."""
    scores = [None if s is None or math.isnan(s) else float(s) for s in scores]
    scored = [i for i, s in enumerate(scores) if s is not None]
    if not scored:
        what = "any pair of these candidates" if comparisons or method != "score" else "any of these candidates"
        raise Unscorable(f"the judge gave no verdict for {what}", NO_VERDICT)
    best = max(scored, key=lambda i: (scores[i], -i))
    worst = min(scored, key=lambda i: (scores[i], i))
    return Ranking(scores, best, worst, comparisons, method)


def _mean_win(n: int, wins: dict[tuple[int, int], float]) -> list[float | None]:
    """Each candidate's mean win probability over its decided comparisons (None when it has none)."""
    total = [0.0] * n
    count = [0] * n
    for (i, j), p in wins.items():
        if p != p:  # NaN: the judge gave no verdict for this pair
            continue
        total[i] += p
        total[j] += 1.0 - p
        count[i] += 1
        count[j] += 1
    return [t / c if c else None for t, c in zip(total, count)]


def _decided(p: float, a: int, b: int) -> float:
    if p != p:
        raise Unscorable(f"the judge gave no verdict for candidates {a} and {b}, and a tournament needs every match "
                         "decided; rank with method='round_robin' or 'circular', which leave undecided pairs out",
                         NO_VERDICT)
    return p


def _knockouts(brackets: list[tuple[list[int], bool]], wins: dict) -> Generator[Pairs, Sequence[float], list[int]]:
    """Single-elimination brackets ``(players, want_winner)`` played side by side: each round of all of them is
    one batch of pairs (the winners' and losers' brackets share their calls, so a pair-PM context is run once per
    round, not once per round and bracket). An odd player out gets a bye."""
    players = [list(p) for p, _ in brackets]
    while any(len(p) > 1 for p in players):
        rounds = [[(p[k], p[k + 1]) for k in range(0, len(p) - 1, 2)] for p in players]
        probs = iter((yield [pair for r in rounds for pair in r]))
        for b, ((_, want_winner), pairs) in enumerate(zip(brackets, rounds)):
            nxt = []
            for a, c in pairs:
                p = _decided(float(next(probs)), a, c)
                wins[(a, c)] = p
                nxt.append(a if (p >= 0.5) == want_winner else c)
            if len(players[b]) % 2:
                nxt.append(players[b][-1])
            players[b] = nxt
    return [p[0] for p in players]


def tournament_plan(n: int) -> Plan:
    """Best and worst of n with at most 2n - 3 comparisons (about 3n/2 - 2).

    Round one pairs the candidates; winners play a knockout for the best, losers one for the worst, both
    brackets in the same batches (1 + ceil(log2(n / 2)) judge calls in all). A candidate's score is its mean win
    probability over the comparisons it took part in. Ties (p = 0.5) go to the earlier candidate.
    """
    if n == 1:
        return Ranking([0.5], 0, 0, 0, "tournament")
    wins: dict[tuple[int, int], float] = {}
    firsts = [(k, k + 1) for k in range(0, n - 1, 2)]
    probs = yield firsts
    winners, losers = [], []
    for (a, b), p in zip(firsts, probs):
        p = _decided(float(p), a, b)
        wins[(a, b)] = p
        winners.append(a if p >= 0.5 else b)
        losers.append(b if p >= 0.5 else a)
    if n % 2:  # the odd one out enters both brackets
        winners.append(n - 1)
        losers.append(n - 1)
    best, worst = yield from _knockouts([(winners, True), (losers, False)], wins)
    if best == worst:
        # Only the odd one out is in both brackets, and only an intransitive judge lets it win one and lose the
        # other (seen with a real pair-PM); the worst is then played for among the other first-round losers
        # ((n - 1) / 2 - 1 more comparisons at most: the total stays within 2n - 3).
        (worst,) = yield from _knockouts([([x for x in losers if x != best], False)], wins)
    return Ranking(_mean_win(n, wins), best, worst, len(wins), "tournament", wins)


def round_robin_plan(n: int) -> Plan:
    """All n(n-1)/2 pairs in one batch; score = mean win probability against every other candidate (llm-blender's
    rank uses the same all-pairs matrix)."""
    if n == 1:
        return Ranking([0.5], 0, 0, 0, "round_robin")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    probs = yield pairs
    wins = {pair: float(p) for pair, p in zip(pairs, probs)}
    ranking = from_scores(_mean_win(n, wins), "round_robin", len(wins))
    ranking.wins = wins
    return ranking


def circular_plan(n: int) -> Plan:
    """Each candidate against the next, the last against the first (n pairs; one for n = 2), as NeMo-Gym's
    genrm_compare does; score = mean win probability over its two comparisons."""
    if n == 1:
        return Ranking([0.5], 0, 0, 0, "circular")
    pairs = [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]
    probs = yield pairs
    wins = {pair: float(p) for pair, p in zip(pairs, probs)}
    ranking = from_scores(_mean_win(n, wins), "circular", len(wins))
    ranking.wins = wins
    return ranking


PLANS = {"tournament": tournament_plan, "round_robin": round_robin_plan, "circular": circular_plan}


def play_together(plans: Sequence[Plan], judge_many: Callable[[dict[int, Pairs]], dict[int, Sequence[float]]]
                  ) -> list[Ranking]:
    """Run ``plans`` in lockstep: at every step the pending pairs of all unfinished plans go to one
    ``judge_many({plan index: pairs})`` call, which answers ``{plan index: probabilities}``."""
    results: list[Ranking | None] = [None] * len(plans)
    pending: dict[int, Pairs] = {}

    def advance(i: int, answer=None) -> None:
        try:
            pending[i] = plans[i].send(answer)
        except StopIteration as done:
            pending.pop(i, None)
            results[i] = done.value

    for i in range(len(plans)):
        advance(i)
    while pending:
        answers = judge_many(dict(pending))
        for i in list(pending):
            if len(answers[i]) != len(pending[i]):
                raise ValueError(f"the judge answered {len(answers[i])} probabilities for {len(pending[i])} pairs")
            advance(i, list(answers[i]))
    return results


def play(plan: Plan, judge: PairJudge) -> Ranking:
    """Run one plan against ``judge`` (one call per step)."""
    return play_together([plan], lambda pending: {i: judge(pairs) for i, pairs in pending.items()})[0]


def tournament(n: int, judge: PairJudge) -> Ranking:
    """:func:`tournament_plan` played against ``judge``."""
    return play(tournament_plan(n), judge)


def round_robin(n: int, judge: PairJudge) -> Ranking:
    """:func:`round_robin_plan` played against ``judge``."""
    return play(round_robin_plan(n), judge)


def unique_candidates(candidates: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct candidates in first-seen order, and for each candidate the index of its distinct one."""
    where: dict[str, int] = {}
    back = [where.setdefault(c, len(where)) for c in candidates]
    return list(where), back


def expand_duplicates(inner: Ranking, back: list[int]) -> Ranking:
    """A ranking of the distinct candidates, spread back over all of them (duplicates share a score)."""
    if back == list(range(len(inner.scores))):
        return inner
    scores = [inner.scores[u] for u in back]
    return Ranking(scores, back.index(inner.best), back.index(inner.worst), inner.comparisons, inner.method)
