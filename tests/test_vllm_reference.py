"""vLLM as an independent reference: its own Llama implementation (code nobody here wrote) scores the tiny
checkpoints, fed the token ids rmplugins builds, and must give rmplugins' numbers within 2e-5 (float32).

- Bradley-Terry: vLLM's pooling runner (``LLM(runner="pooling").classify``, activation off) returns the logit of
  the score head at the last token, which is ``rm.score``.
- RLHFlow pair-PM: vLLM's next-token log-probabilities restricted to "A" and "B" (``allowed_token_ids``, processed
  log-probs) at the end of the judge's prompt give P("A"); ``rm.compare`` is the mean over both orders.
"""

import math

import pytest
import torch

from rmplugins.vllm import settings as vllm_support

pytestmark = pytest.mark.vllm
TOL = 2e-5
PROMPTS = ["Tell me something nice.",
           [{"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "What is the weather like in Paris today? Answer in one sentence."}],
           [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Seine."},
            {"role": "user", "content": "And a longer one, with the countries it crosses?"}],
           "Write a poem about books."]
GOOD = ["Sure, here is something nice: you are great, and today will be a lovely day.",
        "It is sunny and warm, about 24 degrees.",
        "The Danube: Germany, Austria, Slovakia, Hungary, Croatia, Serbia, Romania, Bulgaria, Moldova, Ukraine.",
        "Books are windows, pages are doors; every spine a hallway to distant shores."]
BAD = ["No.", "Rain all day, sorry, I do not know.", "The Nile.", "I cannot write poems."]


def _engine(path, **kwargs):
    args = vllm_support.engine_args(kv_cache_memory_bytes=256 << 20, dtype="float32", enable_prefix_caching=False,
                                    max_model_len=1024, seed=0, enforce_eager=True, **kwargs)
    return vllm_support.start_engine(path, **args)


_close = vllm_support.shutdown_engine


@pytest.fixture(scope="module")
def bt_engine(tiny):
    llm = _engine(tiny("bt_llama3"), runner="pooling")
    yield llm
    _close(llm)


def test_bradley_terry_scores_equal_vllm_classify(bt_engine, models):
    from vllm.inputs import TokensPrompt
    from vllm.pooling_params import PoolingParams

    from rmplugins.inputs import to_conversation

    rm = models("bt_llama3", dtype=torch.float32)
    prompts, responses = PROMPTS * 2, GOOD + BAD
    ours = rm.score(prompts, responses)
    sequences = [rm.encode(list(to_conversation(p, r).messages)) for p, r in zip(prompts, responses)]
    outs = bt_engine.classify([TokensPrompt(prompt_token_ids=s) for s in sequences],
                              pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    theirs = [o.outputs.probs[0] for o in outs]
    assert len(set(round(x, 3) for x in ours)) == len(ours)  # distinct rewards: a mix-up would show
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < TOL, (ours, theirs)
    # and vLLM's default activation is the sigmoid of the same logit
    probs = [o.outputs.probs[0] for o in bt_engine.classify([TokensPrompt(prompt_token_ids=s) for s in sequences],
                                                             use_tqdm=False)]
    assert max(abs(p - 1 / (1 + math.exp(-r))) for p, r in zip(probs, ours)) < TOL


def test_pair_pm_preference_equals_vllm_next_token_logprobs(tiny, models):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from rmplugins.inputs import to_conversation

    rm = models("pair_pm", dtype=torch.float32)
    a_id, b_id = (rm.tokenizer.encode(x, add_special_tokens=False)[0] for x in ("A", "B"))
    assert (a_id, b_id) == (rm.token_a, rm.token_b)  # the ids rmplugins reads are the tokenizer's "A" and "B"
    ours = rm.compare(PROMPTS, GOOD, BAD)
    sequences = []
    for p, x, y in zip(PROMPTS, GOOD, BAD):
        sequences.extend(rm.encode_pair(to_conversation(p, x), to_conversation(p, y)))
    llm = _engine(tiny("pair_pm"), logprobs_mode="processed_logprobs", max_logprobs=2)
    try:
        params = SamplingParams(max_tokens=1, temperature=1.0, allowed_token_ids=[a_id, b_id], logprobs=2, seed=0)
        outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
    finally:
        _close(llm)
    p_a = [math.exp(o.outputs[0].logprobs[0][a_id].logprob) for o in outs]
    p_b = [math.exp(o.outputs[0].logprobs[0][b_id].logprob) for o in outs]
    assert all(abs(x + y - 1) < 1e-6 for x, y in zip(p_a, p_b))  # restricted to the two answers
    theirs = [(p_a[2 * i] + p_b[2 * i + 1]) / 2 for i in range(len(PROMPTS))]
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < TOL, (ours, theirs)
    assert max(abs(x - 0.5) for x in ours) > 0.05  # the judge has opinions here: a swapped A/B would show
