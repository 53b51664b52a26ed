"""The reward models on newer backbones (Skywork-Reward-V2-Qwen3, Skywork-Reward-Gemma-2, INF-ORM's custom head,
Qwen2.5-Math-PRM)
in the places users put them: a real TRL GRPO step with them as ``reward_funcs``, and ``rmplugins serve`` driven
like OpenRLHF's rollout actors with a Llama-3 policy, the conversation re-rendered in each model's own format."""

import asyncio

import pytest
from test_server import _conversations, _openrlhf_payload, _post_all
from test_trl_trainers import _grpo_one_step
from transformers import AutoTokenizer

import rmplugins
from rmplugins import RewardFunction
from rmplugins.serving import BackgroundServer, create_app

KINDS = ["bt_qwen3", "bt_qwen25", "bt_gemma2", "bt_inform", "bt_llama32", "prm"]  # prm: the steps' minimum


@pytest.mark.slow
def test_grpo_with_the_newer_backbones(tiny, tmp_path):
    funcs = [RewardFunction(tiny(kind), device="cpu") for kind in KINDS]
    _grpo_one_step(tiny, tmp_path, funcs)
    for rf in funcs:
        call = rf.last_call
        assert call["rewards"] == pytest.approx(rf.model.score(call["prompts"], call["completions"]), abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_server_recovers_and_rerenders_for_each_backbone(tiny, kind):
    """OpenRLHF sends Llama-3-templated text; the server recovers the conversation and scores it in the reward
    model's own format (ChatML with Qwen3's think block; Gemma's turns, a system message folded into the first user
    turn as for Mistral; Llama-3.1 with its date block)."""
    rm = rmplugins.load_reward_model(tiny(kind), deterministic=True)
    policy = AutoTokenizer.from_pretrained(tiny("policy"))
    convs = _conversations(24, seed=51)  # a third with system messages: Gemma folds them into the first user turn
    payloads = [_openrlhf_payload(policy, c, r) for c, r in convs]
    with BackgroundServer(create_app(rm, policy_tokenizer=policy)) as server:
        answers = asyncio.run(_post_all(server.url + "/get_reward", payloads, 12))
    want = rm.score([c for c, _ in convs], [r for _, r in convs])
    assert [a[1]["rewards"][0] for a in answers] == want
    assert all(a[0] == 200 and a[1]["extra_logs"]["template_recovered"] == [1.0] for a in answers)
    assert max(want) - min(want) > 0.1
