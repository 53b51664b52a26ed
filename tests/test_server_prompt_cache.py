"""Rollout traffic: the n samples of a prompt come as n one-sample requests, and those that land in different
batches must not run the prompt again. The server runs the engine's prompt cache (exact: identical leading tokens
only) and reports it in ``/metrics``; deterministic models and PairRM refuse one when asked."""

import asyncio

import pytest
from test_server import _get, _openrlhf_payload, _post, _post_all
from transformers import AutoTokenizer

import rmplugins
from rmplugins.serving import BackgroundServer, create_app
from rmplugins.serving.batcher import Batcher, Pending

PROMPTS = [
    [{"role": "user", "content": "Write a long and careful explanation of why the sky looks blue in the day, and "
                                 "why sunsets look red, with an example that a child could follow at home. " * 3}],
    [{"role": "system", "content": "You are a patient tutor."},
     {"role": "user", "content": "List the steps to cook rice well, with the reasons behind each of them. " * 4}],
]
RESPONSES = ["Light scatters.", "Short waves scatter more than long ones, so blue fills the sky.",
             "Because of Rayleigh scattering; at sunset light crosses more air.", "I do not know.",
             "Rinse, soak, measure water, simmer covered, rest.", "Boil it.", "Steam it after rinsing twice.",
             "Use a rice cooker and wait."]


@pytest.fixture(scope="module")
def armorm(tiny):
    return rmplugins.load_reward_model(tiny("armorm"))


def test_samples_of_a_prompt_in_separate_requests_run_the_prompt_once(armorm, tiny):
    tok = AutoTokenizer.from_pretrained(tiny("policy"))
    convs = [(p, r) for p in PROMPTS for r in RESPONSES]
    payloads = [_openrlhf_payload(tok, c, r) for c, r in convs]
    want = armorm.score([c for c, _ in convs], [r for _, r in convs])
    assert armorm.engine.prompt_cache_tokens == 0
    with BackgroundServer(create_app(armorm, policy_tokenizer=tok)) as server:
        assert armorm.engine.prompt_cache_tokens > 10_000  # the default: a tenth of free memory
        armorm.engine.stats.reset()
        got = [_post(server.url + "/get_reward", p)[1]["rewards"][0] for p in payloads]  # one at a time
        status, metrics = _get(server.url + "/metrics.json")
        assert status == 200
        engine = metrics["engine"]
        # each prompt ran once: the first sample whole, the other seven from the cached prompt
        assert engine["prefix_cache_hits"] == len(convs) - len(PROMPTS)
        assert engine["tokens_processed"] < 0.5 * engine["tokens_requested"]
        assert metrics["prompt_cache"]["entries"] == len(PROMPTS)
        # concurrent: the same again, batched, all from the cache
        answers = asyncio.run(_post_all(server.url + "/get_reward", payloads, 16))
    assert armorm.engine.prompt_cache_tokens == 0 and not armorm.engine._kept  # left as it was found
    for g, w in zip(got + [a[1]["rewards"][0] for a in answers], want + want):
        assert abs(g - w) <= 5e-5 * (1 + abs(w))  # batching moves the last bits only (README: determinism)


def test_prompt_cache_option_is_refused_where_it_cannot_work(tiny, armorm):
    deterministic = rmplugins.load_reward_model(tiny("armorm"), deterministic=True)
    with pytest.raises(ValueError, match="deterministic"):
        create_app(deterministic, prompt_cache_tokens=1000)
    create_app(deterministic)  # unset: off without a word
    pairrm = rmplugins.load_reward_model(tiny("pairrm"))
    with pytest.raises(ValueError, match="no causal prefix reuse"):
        create_app(pairrm, prompt_cache_tokens=1000)
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        create_app(armorm, prompt_cache_tokens=-5)
    with BackgroundServer(create_app(armorm, prompt_cache_tokens=0)):
        assert armorm.engine.prompt_cache_tokens == 0


def test_batch_token_budget_counts_a_shared_prompt_once():
    """Eight samples of one 4,000-token prompt fit a 6,000-token budget (the prompt runs once); eight of eight
    different prompts do not."""
    batcher = Batcher(lambda items: items, max_batch_size=64, max_batch_tokens=6000, max_wait_ms=0)

    async def collect(requests):
        await batcher.start()
        batcher._task.cancel()  # collect by hand
        for r in requests:
            await batcher._queue.put(r)
        return await batcher._collect(asyncio.get_running_loop())

    same = [Pending([i], None, cost=100, shared={"prompt": 4000}) for i in range(8)]
    assert len(asyncio.run(collect(same))) == 8
    batcher = Batcher(lambda items: items, max_batch_size=64, max_batch_tokens=6000, max_wait_ms=0)
    different = [Pending([i], None, cost=100, shared={f"prompt {i}": 4000}) for i in range(8)]
    assert len(asyncio.run(collect(different))) == 2


def test_serve_cli_refuses_a_prompt_cache_it_cannot_keep(tiny):
    from test_server_hardening import _serve

    res = _serve("--model", tiny("armorm"), "--deterministic", "--prompt-cache-tokens", "1000", "--port", "0")
    assert res.returncode == 2 and "deterministic" in res.stderr and "Traceback" not in res.stderr, res.stderr[-600:]
    assert "loading" not in res.stderr  # refused from the options, before the model loads
    res = _serve("--model", tiny("armorm"), "--engine", "vllm", "--prompt-cache-tokens", "1000", "--port", "0")
    assert res.returncode == 2 and "whose own prefix caching keeps prompts" in res.stderr, res.stderr[-600:]
    assert "loading" not in res.stderr and len(res.stderr.strip().splitlines()) == 1  # no vLLM engine started
    res = _serve("--model", tiny("armorm"), "--prompt-cache-tokens", "-3")
    assert res.returncode == 2 and "--prompt-cache-tokens: -3 is not 0 or more" in res.stderr
