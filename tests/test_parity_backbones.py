"""Bradley-Terry parity on the 2026 backbones that are not plain attention stacks (``rmplugins.testing.backbones``:
transformers' own classes in their own layouts), against the same card pipeline as ``test_parity_bt`` (render,
drop BOS, transformers' text-classification pipeline one sample at a time): Qwen3.5 (gated delta-rule layers that
keep a recurrent state; vision-language, its text config nested), Gemma-3 (vision-language, sliding windows set in
the nested config), Qwen3-MoE, GPT-OSS (attention sinks, an MLP that also returns router scores) and DeepSeek-V3
(latent attention). Each once failed or was silently wrong in the engine: a hybrid's prefix pass read keys from a
recurrent layer, the last layer's MLP got 2-D rows a sparse MoE block cannot read, SDPA was forced on GPT-OSS,
and a nested window went unseen, so Gemma-3 shared prompts longer than its window (rewards off by 2.4). Qwen3-MoE
and GPT-OSS run on vLLM as well (its own models), checked against the same pipeline.
"""

from __future__ import annotations

import engines
import pytest
import torch
import transformers
from reference_helpers import (
    ATOL,
    CANDIDATES,
    LONG,
    MULTI_SYS,
    assert_close,
    assert_differs,
    full_messages,
    pointwise_cases,
)
from test_parity_bt import CardPipeline

from rmplugins import load_reward_model

KINDS = ["bt_qwen35", "bt_gemma3", "bt_qwen3_moe", "bt_gpt_oss", "bt_deepseek_v3"]
RECURRENT = {"bt_qwen35"}     # layers that keep a state, not keys and values: no prefix sharing
NO_SYSTEM_ROLE = {"bt_gemma3"}  # the Gemma template (the system text folded into the first user turn)


@pytest.fixture(scope="module", params=KINDS)
def setup(request, tiny, references):
    kind = request.param
    path = tiny(kind)
    rm = load_reward_model(path, dtype="float32", device="cpu")
    yield kind, rm, references(kind, lambda: CardPipeline(path, system_role=kind not in NO_SYSTEM_ROLE))


def test_score_matches_card_pipeline(setup):
    kind, rm, ref = setup
    assert rm.kind == "bt"
    prompts, completions = pointwise_cases()
    got = rm.score(prompts, completions)
    want = [ref.reward(full_messages(p, c)) for p, c in zip(prompts, completions)]
    assert_close(got, want, ATOL, f"{kind} score")
    assert_differs(want[0], want[1], ATOL, "rewards of two responses")


def test_a_prompts_candidates_share_it_only_where_layers_keep_keys_and_values(setup):
    """Eight candidates of one prompt in one call, as a GRPO group arrives: attention backbones run the prompt once
    (a prefix group; all within Gemma-3's window); the hybrid runs every sequence whole and offers no prompt
    cache. Both equal the pipeline."""
    kind, rm, ref = setup
    candidates = [c for c in CANDIDATES if c != LONG] + ["Lovely.", "Pretty and lovely, both.", "Stunning", "Fine."]
    rm.engine.stats.reset()
    got = rm.score([MULTI_SYS] * len(candidates), candidates)
    want = [ref.reward(full_messages(MULTI_SYS, c)) for c in candidates]
    assert_close(got, want, ATOL, f"{kind} group")
    recurrent = kind in RECURRENT
    assert rm.engine.prefix_reuse is not recurrent and rm.engine.supports_prompt_cache is not recurrent
    assert (rm.engine.stats.prefix_groups == 0) is recurrent


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["bt_qwen3_moe", "bt_gpt_oss"])
def test_vllm_scores_the_moe_backbones_as_the_card(kind, tiny, references):
    """vLLM's own Qwen3-MoE and GPT-OSS (its attention sinks) through ``engine="vllm"``, against the card's model in
    float64: two float32 computations of the tiny GPT-OSS are each up to 2.1e-5 from its exact rewards (measured on
    an AVX2 CPU: the card's pipeline 2.1e-5, vLLM 1.4e-5), so they can differ by more than ATOL; vLLM must be within
    ATOL, or twice the card's own float32 pipeline's error, of the exact value."""
    path = tiny(kind)
    ref = references(kind, lambda: CardPipeline(path, system_role=True))
    rm = engines.load(path, "vllm")
    try:
        prompts, completions = pointwise_cases()
        got = rm.score(prompts, completions)
    finally:
        engines.close(rm)
    chats = [full_messages(p, c) for p, c in zip(prompts, completions)]
    exact = float64_rewards(path, ref, chats)
    noise = max(abs(ref.reward(c) - e) for c, e in zip(chats, exact))  # the card's float32 pipeline's own error
    assert noise < 5e-5, noise
    assert_close(got, exact, max(ATOL, 2 * noise), f"{kind} vllm against float64 (card float32: {noise:.2g} off)")


def float64_rewards(path: str, ref: CardPipeline, chats: list) -> list[float]:
    """The card's model in float64 (its experts one by one: grouped_mm takes no float64), on the card's texts."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float64,
                                                                            experts_implementation="eager")
    model.config.pad_token_id = ref.pipe.model.config.pad_token_id  # as the reference reads it (batch size 1)
    with torch.no_grad():
        return [model(**ref.tokenizer(ref.text(chat), return_tensors="pt")).logits[0, 0].item() for chat in chats]


def test_gemma3_window_from_its_text_config(tiny):
    """Gemma-3's classifier is vision-language: its sliding window (128 tokens here) is in ``text_config``. A call
    holding conversations longer than the window runs them whole; shorter ones share their prompt. Before the
    engine read the nested config it shared the long prompt with a full-attention cache: rewards off by 2.4."""
    path = tiny("bt_gemma3")
    rm = load_reward_model(path, dtype="float32", device="cpu")
    ref = CardPipeline(path, system_role=False)
    assert rm.engine.config.sliding_window == 128
    long_prompt = " ".join(["Please explain why the weather in Paris is good today, with an example."] * 12)
    prompts = [long_prompt] * 3 + ["Write a short poem."] * 3
    completions = ["It is sunny and warm.", "Because of the wind from the west.", "I cannot say.",
                   "Roses are red.", "Here is a poem about books and reading.", "No."]
    lengths = [len(rm.encode(full_messages(p, c))) for p, c in zip(prompts, completions)]
    assert min(lengths[:3]) > 128 > max(lengths[3:])
    want = [ref.reward(full_messages(p, c)) for p, c in zip(prompts, completions)]
    for rows in (slice(0, 3), slice(3, 6)):
        rm.engine.stats.reset()
        assert_close(rm.score(prompts[rows], completions[rows]), want[rows], ATOL, "gemma-3 around its window")
        assert rm.engine.stats.prefix_groups == (0 if rows.start == 0 else 1)
    assert_differs(want[0], want[1], ATOL, "rewards of two long responses")


def test_gpt_oss_runs_its_own_attention_with_sinks(tiny):
    """GPT-OSS's attention adds learned sinks, which transformers' SDPA path does not implement (it refuses the
    class): the loader leaves the choice to transformers (eager here) instead of forcing SDPA."""
    path = tiny("bt_gpt_oss")
    rm = load_reward_model(path, dtype="float32", device="cpu")
    assert rm.model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        transformers.AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="sdpa")
    sinks = rm.model.model.layers[0].self_attn.sinks
    assert sinks.abs().max() > 0  # stored, not left at zero: they change the attention
    with torch.inference_mode():
        sinks.mul_(-1)
    try:
        flipped = rm.score(["Write a short poem."], ["Roses are red."])[0]
    finally:
        with torch.inference_mode():
            sinks.mul_(-1)
    assert_differs(flipped, rm.score(["Write a short poem."], ["Roses are red."])[0], ATOL, "sinks matter")
