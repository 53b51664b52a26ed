"""Bradley-Terry parity: the library against seed 003's text-classification pipeline, one sample at a time.

Reference (RM-Mistral-7B card): ``apply_chat_template(chat, tokenize=False, add_generation_prompt=False)`` with
the BOS string removed, then ``pipeline("sentiment-analysis", function_to_apply="none", batch_size=1)``; the
reward is the single logit. Run on the tiny RM-Mistral layout (``bt``: Mistral-Instruct template that rejects
system messages, separate [PAD]) and the FsfairX-LLaMA3 layout (``bt_llama3``: Llama-3 template).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from reference_helpers import (
    ATOL,
    CANDIDATES,
    MULTI_SYS,
    SINGLE,
    assert_close,
    assert_differs,
    completion_text,
    conv,
    fold_system,
    full_messages,
    pairwise_cases,
    pointwise_cases,
    sigmoid,
)
from transformers import AutoTokenizer

from rmplugins import load_reward_model

KINDS = ["bt", "bt_llama3", "bt_real_vocab", "bt_llama3_real_vocab"]  # tiny and published vocabularies


class CardPipeline:
    """Seed 003, verbatim in spirit: render, drop BOS, text-classification pipeline, batch size 1."""

    def __init__(self, path: str, system_role: bool):
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.pipe = transformers.pipeline("text-classification", model=path, tokenizer=self.tokenizer,
                                          device="cpu", dtype=torch.float32)
        self.system_role = system_role
        self._cache: dict[str, float] = {}
        # Batch size 1 never pads. The tiny FsfairX layout sets pad_token_id = eos = <|eot_id|>, which ends every
        # Llama-3 turn, so transformers' pooling ("rightmost token != pad") would read the token *before* the final
        # <|eot_id|>. The real checkpoints' pad id never occurs in chat text (and the RLHFlow training code pooled
        # at the last real token), so the reference drops the pad id: the reward is the logit at the last token.
        self.pad_collides = self.pipe.model.config.pad_token_id == self.tokenizer.eos_token_id
        if self.pad_collides:
            self.pipe.model.config.pad_token_id = None

    def text(self, chat: list[dict]) -> str:
        if not self.system_role:  # Mistral-Instruct raises on a system message: the documented fold
            chat = fold_system(chat)
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False).replace(
            self.tokenizer.bos_token, "")

    def reward(self, chat: list[dict]) -> float:
        text = self.text(chat)
        if text not in self._cache:  # one pipeline call per distinct text keeps the module fast
            out = self.pipe([text], function_to_apply="none", top_k=None, batch_size=1)
            self._cache[text] = float(out[0][0]["score"])
        return self._cache[text]


@pytest.fixture(scope="module", params=KINDS)
def setup(request, tiny):
    path = tiny(request.param)
    rm = load_reward_model(path, dtype="float32", device="cpu")
    ref = CardPipeline(path, system_role=request.param.startswith("bt_llama3"))
    return request.param, rm, ref


def test_kind_detected(setup):
    kind, rm, _ = setup
    assert rm.kind == "bt"


def test_score_matches_card_pipeline(setup):
    _, rm, ref = setup
    prompts, completions = pointwise_cases()
    got = rm.score(prompts, completions)
    want = [ref.reward(full_messages(p, c)) for p, c in zip(prompts, completions)]
    assert_close(got, want, ATOL, "bt score")
    # non-vacuous: the rewards differ across responses by far more than the tolerance
    assert_differs(want[0], want[1], ATOL, "rewards of two responses")


def test_bos_removal_matters(setup):
    """The card strips the BOS string so the tokenizer adds exactly one; keeping it changes the reward."""
    _, rm, ref = setup
    chat = full_messages(SINGLE, CANDIDATES[0])
    kept = ref.tokenizer.apply_chat_template(chat, tokenize=False)
    with_two_bos = float(ref.pipe([kept], function_to_apply="none", top_k=None)[0][0]["score"])
    assert_differs(with_two_bos, ref.reward(chat), ATOL, "one vs two BOS")
    assert_close(rm.score([SINGLE], [CANDIDATES[0]]), [ref.reward(chat)], ATOL, "bt single")


def test_pad_equals_eos_pooling_would_differ(setup):
    """Documents why the reference drops a pad id equal to eos: with it, transformers pools one token early.
    FsfairX's layout pads with <|eot_id|> (the collision); RM-Mistral's has its own [PAD]: rmplugins reads the last
    token in both."""
    kind, rm, ref = setup
    assert ref.pad_collides == kind.startswith("bt_llama3")
    chat = full_messages(SINGLE, CANDIDATES[0])
    ids = ref.tokenizer(ref.text(chat), return_tensors="pt")["input_ids"]
    model = ref.pipe.model
    with torch.no_grad():
        per_token = model.score(model.model(ids).last_hidden_state)[0, :, 0]
    assert_close(rm.score([SINGLE], [CANDIDATES[0]]), [per_token[-1].item()], ATOL, "last token")
    if ref.pad_collides:
        assert_differs(per_token[-1].item(), per_token[-2].item(), ATOL, "last vs. second-to-last token")


def test_standard_and_conversational_forms_agree(setup):
    _, rm, _ = setup
    prompts = [SINGLE, MULTI_SYS]
    assert_close(rm.score(prompts, [CANDIDATES[1], CANDIDATES[2]]),
                 rm.score(prompts, [conv(CANDIDATES[1]), conv(CANDIDATES[2])]), 1e-6, "forms")


def test_compare_is_sigmoid_of_reward_gap(setup):
    _, rm, ref = setup
    prompts, a, b = pairwise_cases()
    got = rm.compare(prompts, a, b)
    want = [sigmoid(ref.reward(full_messages(p, x)) - ref.reward(full_messages(p, y)))
            for p, x, y in zip(prompts, a, b)]
    assert_close(got, want, ATOL, "bt compare")
    assert all(0.0 < g < 1.0 for g in got)


def test_rank_uses_rewards(setup):
    _, rm, ref = setup
    for prompt in (SINGLE, MULTI_SYS):
        ranking = rm.rank(prompt, CANDIDATES)
        want = [ref.reward(full_messages(prompt, c)) for c in CANDIDATES]
        assert_close(ranking.scores, want, ATOL, "bt rank scores")
        assert ranking.best == max(range(len(want)), key=lambda i: want[i])
        assert ranking.worst == min(range(len(want)), key=lambda i: want[i])
        assert ranking.comparisons == 0


def test_empty_completion_is_scored(setup):
    _, rm, ref = setup
    got = rm.score([SINGLE, SINGLE], ["", conv("")])
    want = ref.reward(full_messages(SINGLE, ""))
    assert_close(got, [want, want], ATOL, "empty completion")
    assert completion_text(conv("")) == ""
