"""RLHFlow pair-preference-model parity: the library against seed 000's card loop, one prompt at a time.

Reference (card code, kept line for line): the "plain" template renders the context (conversation without the
answer), the prompt template wraps it with the two responses, the model's own chat template wraps that as one
user message, the BOS string is removed, ``encode(..., add_special_tokens=False)``; the logits of "A" and "B" at
the last position give a numpy softmax; both positions are tried and the probabilities of the chosen response are
averaged. The library's P(a beats b) must equal that average.
"""

from __future__ import annotations

import engines
import numpy as np
import pytest
import torch
from engines import both
from reference_helpers import (
    ATOL,
    CANDIDATES,
    LONG,
    MEDIUM,
    MULTI,
    MULTI_SYS,
    SHORT,
    SINGLE,
    assert_close,
    assert_differs,
    check_pairwise_ranking,
    completion_text,
    conv,
    fold_system,
    pairwise_cases,
    prompt_messages,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

PLAIN = ("\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n {{ message['content'] }}"
         "{% else %}\n\n<turn> assistant\n {{ message['content'] }}{% endif %}{% endfor %}\n\n\n")
PROMPT_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_A} [RESPONSE B] {response_B} \n"


class CardPairPM:
    def __init__(self, path: str):
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        self.tokenizer_plain = AutoTokenizer.from_pretrained(path, use_fast=True)
        self.tokenizer_plain.chat_template = PLAIN
        token_id_A = self.tokenizer.encode("A", add_special_tokens=False)
        token_id_B = self.tokenizer.encode("B", add_special_tokens=False)
        assert len(token_id_A) == 1 and len(token_id_B) == 1
        self.token_id_A, self.token_id_B = token_id_A[0], token_id_B[0]
        self.temperature = 1.0
        self._cache: dict[str, tuple[float, float]] = {}

    def logits(self, context: str, response_A: str, response_B: str) -> tuple[float, float]:
        prompt = PROMPT_TEMPLATE.format(context=context, response_A=response_A, response_B=response_B)
        message = [{"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(message, tokenize=False).replace(self.tokenizer.bos_token, "")
        if text not in self._cache:
            input_ids = self.tokenizer.encode(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                output = self.model(input_ids)
            self._cache[text] = (output.logits[0, -1, self.token_id_A].item(),
                                 output.logits[0, -1, self.token_id_B].item())
        return self._cache[text]

    def probs_chosen(self, instruction: list[dict], response_chosen: str, response_rejected: str) -> list[float]:
        # The plain template alternates roles by position; a system message is folded into the first user turn.
        context = self.tokenizer_plain.apply_chat_template(fold_system(instruction), tokenize=False)
        responses = [response_chosen, response_rejected]
        probs_chosen = []
        for chosen_position in [0, 1]:
            response_A = responses[chosen_position]
            response_B = responses[1 - chosen_position]
            logit_A, logit_B = self.logits(context, response_A, response_B)
            Z = np.exp(logit_A / self.temperature) + np.exp(logit_B / self.temperature)
            logit_chosen = [logit_A, logit_B][chosen_position]
            probs_chosen.append(np.exp(logit_chosen / self.temperature) / Z)
        return probs_chosen

    def prob(self, prompt, a, b) -> float:
        return float(np.mean(self.probs_chosen(prompt_messages(prompt), completion_text(a), completion_text(b))))


@pytest.fixture(scope="module", params=both(["pair_pm", "pair_pm_real_vocab"]))  # tiny and published vocabularies
def setup(request, tiny, references):
    kind, engine = request.param
    path = tiny(kind)
    rm = engines.load(path, engine)
    yield rm, references(kind, lambda: CardPairPM(path))
    engines.close(rm)


def test_kind_detected(setup):
    assert setup[0].kind == "pair_pm"
    with pytest.raises(TypeError, match="compare"):
        setup[0].score([SINGLE], [SHORT])


def test_compare_matches_card_loop(setup):
    rm, ref = setup
    prompts, a, b = pairwise_cases()
    got = rm.compare(prompts, a, b)
    want = [ref.prob(p, x, y) for p, x, y in zip(prompts, a, b)]
    assert_close(got, want, ATOL, "pair_pm compare")


def test_position_swap_is_not_vacuous(setup):
    """The two orders give clearly different probabilities of the chosen response, so averaging them (and
    putting the right response in the right slot) is what the test checks; P(a>b) + P(b>a) = 1."""
    rm, ref = setup
    for prompt in (SINGLE, MULTI):
        p_first, p_second = ref.probs_chosen(prompt_messages(prompt), SHORT, MEDIUM)
        assert_differs(p_first, p_second, ATOL, "probability of a in slot A vs. slot B")
        assert_differs(p_first, np.mean([p_first, p_second]), ATOL, "un-swapped vs. averaged")
        ab, ba = rm.compare([prompt, prompt], [SHORT, MEDIUM], [MEDIUM, SHORT])
        assert_close([ab, ba], [ref.prob(prompt, SHORT, MEDIUM), ref.prob(prompt, MEDIUM, SHORT)], ATOL, "both orders")
        assert abs(ab + ba - 1.0) < 1e-5


def test_multi_turn_and_forms(setup):
    rm, ref = setup
    got = rm.compare([MULTI, MULTI_SYS, MULTI], [conv(LONG), SHORT, ""], [conv(SHORT), conv(LONG), conv(MEDIUM)])
    want = [ref.prob(MULTI, LONG, SHORT), ref.prob(MULTI_SYS, SHORT, LONG), ref.prob(MULTI, "", MEDIUM)]
    assert_close(got, want, ATOL, "pair_pm multi-turn")


@pytest.mark.parametrize("prompt", [SINGLE, MULTI_SYS], ids=["single", "multi"])
def test_rank_round_robin_and_tournament(setup, prompt):
    rm, ref = setup
    cands = [conv(c) if i % 2 else c for i, c in enumerate(CANDIDATES)]
    check_pairwise_ranking(rm, prompt, cands, lambda i, j: ref.prob(prompt, cands[i], cands[j]))


def test_a_temperature_that_would_make_every_probability_wrong_is_refused(tiny):
    """temperature = 0 divided the answer logits by zero and a negative one swapped A and B, both silently."""
    import rmplugins

    for bad in (0, -1.0, float("nan"), float("inf"), "hot", "2", False):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            rmplugins.load_reward_model(tiny("pair_pm"), temperature=bad)
    warm = rmplugins.load_reward_model(tiny("pair_pm"), temperature=2.0)  # the card's loop at that temperature
    ref = CardPairPM(tiny("pair_pm"))
    ref.temperature = 2.0
    prompts, a, b = pairwise_cases()
    got = warm.compare(prompts, a, b)
    assert_close(got, [ref.prob(p, x, y) for p, x, y in zip(prompts, a, b)], ATOL, "pair_pm compare at temperature 2")
    card = rmplugins.load_reward_model(tiny("pair_pm")).compare(prompts, a, b)
    assert any(abs(x - y) > 100 * ATOL for x, y in zip(got, card))  # the temperature is applied, not ignored
