"""Tournament and round robin against synthetic judges with known answers (no model needed)."""

import itertools
import random

import pytest

from rmplugins.ranking import rank_with_duplicates, round_robin, tournament


def strength_judge(strengths, calls):
    def judge(pairs):
        calls.append(list(pairs))
        return [1.0 / (1.0 + pow(2.718281828, strengths[j] - strengths[i])) for i, j in pairs]
    return judge


@pytest.mark.parametrize("n", list(range(1, 18)))
def test_tournament_finds_best_and_worst_within_2n_minus_3(n):
    rng = random.Random(n)
    for _ in range(20):
        strengths = [rng.uniform(-5, 5) for _ in range(n)]
        calls = []
        r = tournament(n, strength_judge(strengths, calls))
        assert r.best == max(range(n), key=strengths.__getitem__)
        assert r.worst == min(range(n), key=strengths.__getitem__)
        judged = [p for call in calls for p in call]
        assert len(judged) == r.comparisons == len({frozenset(p) for p in judged})
        assert r.comparisons <= max(0, 2 * n - 3)
        # one batched call per round: about log2(n) calls, not one per comparison
        assert len(calls) <= 1 + 2 * max(1, (n - 1).bit_length())


def test_round_robin_judges_every_pair_once_and_scores_mean_win():
    strengths = [0.0, 1.0, -1.0, 3.0]
    calls = []
    r = round_robin(4, strength_judge(strengths, calls))
    assert len(calls) == 1 and r.comparisons == 6
    assert sorted(calls[0]) == list(itertools.combinations(range(4), 2))
    assert r.best == 3 and r.worst == 2
    p = {pair: w for pair, w in zip(calls[0], strength_judge(strengths, [])(calls[0]))}
    expected0 = (p[(0, 1)] + p[(0, 2)] + p[(0, 3)]) / 3
    assert r.scores[0] == pytest.approx(expected0)


def test_duplicates_are_judged_once_and_share_scores():
    seen = []

    def rank_unique(cands):
        seen.append(cands)
        return round_robin(len(cands), strength_judge([len(c) for c in cands], []))

    r = rank_with_duplicates(["aa", "b", "aa", "cccc"], rank_unique)
    assert seen == [["aa", "b", "cccc"]]
    assert r.scores[0] == r.scores[2]
    assert r.best == 3 and r.worst == 1
