"""Shared inputs and small utilities for the reference-parity tests (tests/test_parity_*.py).

The reference implementations themselves live in each test file, re-written from the seed cards' code
(/work/shared/seeds) and models.md; nothing here imports the library's family code, so a library bug cannot
leak into the references. Everything runs in float32 on CPU, one sample at a time on the reference side.
"""

from __future__ import annotations

import math

import pytest
import torch

ATOL = 2e-5
ATOL_GPM = 1e-4

SYSTEM = "You are a helpful and honest assistant."
SINGLE = 'What are some synonyms for the word "beautiful"?'
MULTI = [  # user / assistant / user
    {"role": "user", "content": "Hello, how are you today?"},
    {"role": "assistant", "content": "I am good, thanks! How can I help you today?"},
    {"role": "user", "content": "Please explain the weather in Paris tomorrow."},
]
MULTI_SYS = [{"role": "system", "content": SYSTEM}] + MULTI

SHORT = "Gorgeous, lovely, stunning."
MEDIUM = "Sure, here is a list: gorgeous, lovely, stunning, pretty. Thanks for the question!"
LONG = " ".join(["Here is a step by step answer to your question about the weather in Paris, France."] * 12
                + ["However, the result can change because the weather is not easy to know."])
EMPTY = ""
CANDIDATES = [SHORT, LONG, MEDIUM, "Sorry, I cannot answer this.", EMPTY]


def conv(text: str) -> list[dict]:
    """TRL's conversational completion form."""
    return [{"role": "assistant", "content": text}]


def prompt_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def completion_text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def full_messages(prompt, completion) -> list[dict]:
    return prompt_messages(prompt) + [{"role": "assistant", "content": completion_text(completion)}]


def fold_system(messages: list[dict]) -> list[dict]:
    """For formats with no system role (Mistral-Instruct, the pair-PM plain template, PairRM's llm-blender
    format), the documented library convention: the system text is prepended to the first user turn as
    "{system}\\n\\n{user}". Used only to build the reference input for system-message prompts of those formats."""
    if not messages or messages[0]["role"] != "system":
        return messages
    rest = [dict(m) for m in messages[1:]]
    rest[0]["content"] = f"{messages[0]['content']}\n\n{rest[0]['content']}"
    return rest


# Pointwise batch: single- and multi-turn, str and conversational completions, an empty one, very different
# lengths (so the library's length-sorted padded batches are checked against one-at-a-time references).
def pointwise_cases(with_system: bool = True) -> tuple[list, list]:
    multi = MULTI_SYS if with_system else MULTI
    prompts = [SINGLE, SINGLE, SINGLE, multi, multi, MULTI, SINGLE, multi]
    completions = [SHORT, conv(MEDIUM), EMPTY, LONG, conv(SHORT), MEDIUM, LONG, conv(EMPTY)]
    return prompts, completions


# Pairwise batch, same coverage.
def pairwise_cases(with_system: bool = True) -> tuple[list, list, list]:
    multi = MULTI_SYS if with_system else MULTI
    prompts = [SINGLE, SINGLE, multi, MULTI, SINGLE, multi]
    a = [SHORT, conv(LONG), MEDIUM, conv(EMPTY), EMPTY, conv(LONG)]
    b = [MEDIUM, conv(SHORT), EMPTY, conv(MEDIUM), LONG, conv(SHORT)]
    return prompts, a, b


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def close(got: float, want: float) -> bool:
    """The determinism contract (README): within 5e-5 x (1 + |reward|) in float32, however the rows were batched."""
    return abs(got - want) <= 5e-5 * (1 + abs(want))


def assert_close(got, want, atol: float, what: str = "") -> None:
    got_t = torch.as_tensor(got, dtype=torch.float64)
    want_t = torch.as_tensor(want, dtype=torch.float64)
    assert got_t.shape == want_t.shape, f"{what}: shape {tuple(got_t.shape)} != reference {tuple(want_t.shape)}"
    diff = (got_t - want_t).abs().max().item() if got_t.numel() else 0.0
    assert diff <= atol, f"{what}: max |library - reference| = {diff:.3g} > {atol}\nlib={got_t}\nref={want_t}"


def assert_differs(x, y, atol: float, what: str) -> None:
    """Non-vacuity: the quantity the test relies on actually changes with the detail under test."""
    d = (torch.as_tensor(x, dtype=torch.float64) - torch.as_tensor(y, dtype=torch.float64)).abs().max().item()
    assert d > 10 * atol, f"{what}: only {d:.3g} apart, so the parity test could not tell them apart"


def check_pairwise_ranking(rm, prompt, candidates, prob):
    """Check ``rank`` of a pairwise kind against a reference ``prob(i, j)`` = P(cand i beats cand j).

    round_robin: scores = mean win probability over all pairs, comparisons = n(n-1)/2.
    tournament: at most 2n-3 distinct pairs; best beats (p >= 0.5) every candidate it met on the way, the
    worst loses to every candidate it met; scores = mean win probability over the comparisons taken; best/worst
    must agree with the reference's pairwise probabilities (the reference's best beats the returned worst).
    """
    n = len(candidates)
    P = [[0.5] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            P[i][j] = prob(i, j)
            P[j][i] = 1.0 - P[i][j]
    rr = rm.rank(prompt, candidates, method="round_robin")
    want = [sum(P[i][j] for j in range(n) if j != i) / (n - 1) for i in range(n)]
    assert_close(rr.scores, want, ATOL, "round_robin scores")
    assert rr.comparisons == n * (n - 1) // 2
    assert rr.best == max(range(n), key=lambda i: (want[i], -i))
    assert rr.worst == min(range(n), key=lambda i: (want[i], i))

    tr = rm.rank(prompt, candidates, method="tournament")
    assert 0 < tr.comparisons <= 2 * n - 3
    wins = getattr(tr, "wins", None) or {}
    if wins:
        assert len(wins) == tr.comparisons
        odd = n - 1 if n % 2 else None
        firsts = [(k, k + 1) for k in range(0, n - 1, 2)]
        first_winners = {a if wins[(a, b)] >= 0.5 else b for a, b in firsts}
        first_losers = {x for pair in firsts for x in pair} - first_winners
        total, count = [0.0] * n, [0] * n
        for (i, j), p in wins.items():
            assert abs(p - P[i][j]) <= ATOL, f"tournament judged P({i}>{j})={p}, reference {P[i][j]}"
            total[i] += P[i][j]
            total[j] += P[j][i]
            count[i] += 1
            count[j] += 1
            # the odd one out (n odd) plays in both brackets: as best it beat the first-round winners it met, as
            # worst it lost to the first-round losers it met (an intransitive judge may differ in the other bracket);
            # when it won both, the worst is played for again without it (ranking.tournament_plan)
            if tr.best in (i, j) and not (tr.best == odd and (j if tr.best == i else i) in first_losers):
                other = j if tr.best == i else i
                assert P[tr.best][other] >= 0.5 - ATOL, "tournament best lost one of its matches"
            if tr.worst in (i, j) and not (tr.worst == odd and (j if tr.worst == i else i) in first_winners) \
                    and not (tr.best == odd and odd in (i, j)):
                other = j if tr.worst == i else i
                assert P[tr.worst][other] <= 0.5 + ATOL, "tournament worst won one of its matches"
        assert_close(tr.scores, [t / c if c else 0.5 for t, c in zip(total, count)], ATOL, "tournament scores")
    assert tr.best != tr.worst
    # With a Condorcet winner/loser in the reference probabilities, any correct knockout must find it.
    for c in range(n):
        if all(P[c][j] > 0.5 for j in range(n) if j != c):
            assert tr.best == c, f"reference Condorcet winner {c}, tournament best {tr.best}"
        if all(P[c][j] < 0.5 for j in range(n) if j != c):
            assert tr.worst == c, f"reference Condorcet loser {c}, tournament worst {tr.worst}"
    return P, rr, tr


def pytest_param_forms():
    return pytest.mark.parametrize("form", ["standard", "conversational"])
