"""OpenRLHF 0.11.2's own reward server, ``openrlhf/cli/serve_rm.py``, beside ``rmplugins serve`` (issue 13, item 4).

Both are driven by OpenRLHF's own rollout client (``_fetch_rewards_via_http``: one sample per request) with the same
Llama-3-templated samples, on the same Bradley-Terry checkpoint (the FsfairX-LLaMA3-RM layout on the published
Llama-3 vocabulary, stored in bf16 like the hub's). OpenRLHF's server runs unmodified as a subprocess, in bf16 (it
offers bf16 or fp16 only), with the CPU stand-in for the flash_attn import (``benchmarks/peers``).
"""

import asyncio
import sys
from pathlib import Path

import pytest
import torch
from test_openrlhf_client import openrlhf_agent
from test_server import _conversations, _openrlhf_payload
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import rmplugins
from rmplugins.serving import BackgroundServer, create_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from peers import openrlhf_serve_rm  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tiny):
    return tiny("bt_llama3_real_vocab")


@pytest.fixture(scope="module")
def samples(checkpoint):
    tok = AutoTokenizer.from_pretrained(checkpoint)
    convs = _conversations(96, seed=41)
    return tok, convs, [_openrlhf_payload(tok, c, r) for c, r in convs]


def post_with_openrlhf_client(url, payloads):
    executor = openrlhf_agent().SingleTurnAgentExecutor(remote_rm_url=url + "/get_reward")

    async def rollouts():
        return await asyncio.gather(*(executor._fetch_rewards_via_http(p["query"], p["prompts"], p["labels"])
                                      for p in payloads))

    answers = asyncio.run(rollouts())
    assert all(len(a) == 1 and len(a[0]["rewards"]) == 1 for a in answers)
    return [a[0]["rewards"][0] for a in answers]


def transformers_logit_at_last_token(checkpoint, tok, queries, dtype):
    """``AutoModelForSequenceClassification`` one query at a time, tokenized as OpenRLHF does (no special tokens
    added: the query already holds the BOS). The tiny layout's pad id is <|eot_id|>, which ends every turn, so the
    pooling by pad id is switched off: the logit at the last token, as both servers read it."""
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, dtype=dtype).eval()
    model.config.pad_token_id = None
    with torch.no_grad():
        return [model(tok(q, add_special_tokens=False, return_tensors="pt").input_ids).logits[0, 0].item()
                for q in queries]


def test_openrlhf_serve_rm_beside_rmplugins_serve(checkpoint, samples):
    tok, convs, payloads = samples
    queries = [p["query"][0] for p in payloads]
    with openrlhf_serve_rm(checkpoint, param_dtype="bf16", attn_implementation="sdpa") as peer:
        theirs = post_with_openrlhf_client(peer.url, payloads)
    rm = rmplugins.load_reward_model(checkpoint, device="cpu", dtype="float32", deterministic=True)
    with BackgroundServer(create_app(rm, policy_tokenizer=tok)) as server:
        ours = post_with_openrlhf_client(server.url, payloads)

    # OpenRLHF's server is run as its users run it: its rewards are transformers' bf16 forward, bit for bit.
    hf_bf16 = transformers_logit_at_last_token(checkpoint, tok, queries, torch.bfloat16)
    assert theirs == hf_bf16
    # Ours are the float32 reference (deterministic: independent of how requests were batched).
    hf_fp32 = transformers_logit_at_last_token(checkpoint, tok, queries, torch.float32)
    assert ours == rm.score([c for c, _ in convs], [r for _, r in convs])
    assert max(abs(a - b) for a, b in zip(ours, hf_fp32)) < 2e-5
    # So the two servers agree up to bf16 rounding, sample by sample: |ours - theirs| is the reference's own
    # bf16-vs-fp32 difference, and the rewards are not trivially equal (bf16 moves them) nor constant.
    for o, t, r16, r32 in zip(ours, theirs, hf_bf16, hf_fp32):
        assert abs(abs(o - t) - abs(r16 - r32)) < 2e-5
    assert max(abs(o - t) for o, t in zip(ours, theirs)) > 1e-3
    assert max(ours) - min(ours) > 1.0


def test_flash_attn_standin_refuses_packing():
    """The stand-in lets OpenRLHF import; if anything ever called its packing path, it would say so, not compute."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    try:
        from flash_attn.bert_padding import unpad_input
    finally:  # no later test may see a flash_attn module in this process
        sys.path.remove(str(ROOT / "benchmarks" / "peers"))
        for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
            del sys.modules[name]
    with pytest.raises(RuntimeError, match="packing"):
        unpad_input(torch.zeros(1, 2, 1), torch.ones(1, 2))
