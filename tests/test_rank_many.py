"""rank_many: several prompts' groups ranked at once equal each group ranked alone, with the model calls batched
across groups (for a tournament: one engine call per round for all prompts)."""

import pytest

PROMPTS = ["Write a short poem about the sea, please. " * 3, "How do I boil an egg?",
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]]
CANDIDATES = [
    ["The sea is wide and blue.", "Waves, waves, waves.", "No.", "The sea is wide and blue.", "Salt and foam " * 4],
    ["Boil water, add the egg, wait nine minutes.", "Microwave it."],
    ["Blue."],
]



def _same(a, b):
    return (a.best, a.worst, a.comparisons, a.method) == (b.best, b.worst, b.comparisons, b.method) \
        and a.scores == pytest.approx(b.scores, abs=2e-5)


@pytest.mark.parametrize("kind,method", [("bt", None), ("armorm", None), ("gpm", None), ("pair_pm", "tournament"),
                                         ("pair_pm", "round_robin"), ("pairrm", "tournament")])
def test_rank_many_equals_rank_of_each_group(models, kind, method):
    rm = models(kind)
    alone, calls = [], []
    for p, c in zip(PROMPTS, CANDIDATES):
        rm.engine.stats.reset()
        alone.append(rm.rank(p, c, method))
        calls.append(rm.engine.stats.calls)
    rm.engine.stats.reset()
    together = rm.rank_many(PROMPTS, CANDIDATES, method)
    assert len(together) == len(alone) and all(_same(a, b) for a, b in zip(together, alone))
    assert together[0].scores[0] == together[0].scores[3]  # identical candidates share their score exactly
    if rm.pointwise or kind == "gpm":
        assert rm.engine.stats.calls == 1  # every group's candidates in one engine call
    else:  # lockstep: as many calls as the longest group's tournament alone, the others ride along
        assert rm.engine.stats.calls == max(calls) < sum(calls)


def test_pair_pm_rank_many_runs_each_context_once(models):
    rm = models("pair_pm")
    rm.engine.stats.reset()
    rm.rank_many(PROMPTS, CANDIDATES, "tournament")
    st = rm.engine.stats
    assert st.prefix_cache_hits >= 1 and not rm.engine._kept


def test_rank_many_bad_input(models):
    rm = models("pair_pm")
    with pytest.raises(ValueError, match="2 prompts but 1 candidate lists"):
        rm.rank_many(["a", "b"], [["x", "y"]])
    with pytest.raises(ValueError, match="list of prompts"):
        rm.rank_many("a prompt", [["x", "y"]])
    with pytest.raises(ValueError, match="non-empty list of candidate"):
        rm.rank_many(["a"], [[]])
    assert all(models(kind).rank_many([], []) == [] for kind in ("bt", "gpm", "pair_pm"))
