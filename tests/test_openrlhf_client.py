"""OpenRLHF 0.11.2's own client code against ``rmplugins serve`` (issue 13, item 2).

The rollout actors' reward calls live in ``openrlhf/utils/agent.py`` (``SingleTurnAgentExecutor``): one sample per
request, a fresh aiohttp session per try, 5 tries 1 s apart, ``raise_for_status``; or a ``.py`` file's
``reward_func`` through ``asyncio.to_thread``. Those are run here as installed (``pip install --no-deps
openrlhf==0.11.2`` at set-up), not re-implemented. ``openrlhf/utils/__init__.py`` imports the trainer stack
(deepspeed, latex tools), which the client needs none of: the package is entered without running it.
"""

import asyncio
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
from test_server import _conversations, _openrlhf_payload

import rmplugins
from rmplugins.serving import BackgroundServer, create_app

ROOT = Path(__file__).resolve().parents[1]


def openrlhf_agent():
    """``openrlhf.utils.agent`` from the installed package, its parent package entered without its __init__."""
    spec = importlib.util.find_spec("openrlhf")
    assert spec is not None, "OpenRLHF 0.11.2 is installed by `make setup` (pip install --no-deps openrlhf==0.11.2)"
    if "openrlhf.utils" not in sys.modules:
        shell = types.ModuleType("openrlhf.utils")
        shell.__path__ = [os.path.join(spec.submodule_search_locations[0], "utils")]
        sys.modules["openrlhf.utils"] = shell
    agent = importlib.import_module("openrlhf.utils.agent")
    assert Path(agent.__file__).resolve().is_relative_to(Path(spec.submodule_search_locations[0]).resolve())
    return agent


@pytest.fixture(scope="module")
def armorm(tiny):
    return rmplugins.load_reward_model(tiny("armorm"), deterministic=True)


def test_openrlhf_http_client_hundreds_of_concurrent_samples(armorm, policy_tok):
    """OpenRLHF's ``_fetch_rewards_via_http``, one sample per call, 240 at once: every reward is ``rm.score`` of
    the conversation recovered from the policy template, bit for bit (deterministic model)."""
    agent = openrlhf_agent()
    convs = _conversations(240, seed=31)
    payloads = [_openrlhf_payload(policy_tok, c, r) for c, r in convs]
    with BackgroundServer(create_app(armorm, policy_tokenizer=policy_tok)) as server:
        executor = agent.SingleTurnAgentExecutor(remote_rm_url=server.url + "/get_reward")

        async def rollouts():
            return await asyncio.gather(*(executor._fetch_rewards_via_http(p["query"], p["prompts"], p["labels"])
                                          for p in payloads))

        answers = asyncio.run(rollouts())
    want = armorm.score([c for c, _ in convs], [r for _, r in convs])
    for (answer,), w in zip(answers, want):  # one server: one answer per call
        assert answer["rewards"] == [w] and answer["scores"] == [w]
        assert answer["extra_logs"]["template_recovered"] == [1.0]


def test_openrlhf_reward_func_file_through_openrlhf_loader(armorm, policy_tok, monkeypatch):
    """``--reward.remote_url /path/reward_func.py``: OpenRLHF loads our file with its own importer and calls it
    from threads, one sample per call."""
    agent = openrlhf_agent()
    convs = _conversations(24, seed=32)
    payloads = [_openrlhf_payload(policy_tok, c, r) for c, r in convs]
    with BackgroundServer(create_app(armorm, policy_tokenizer=policy_tok, api_key="k3y")) as server:
        monkeypatch.setenv("RMPLUGINS_REWARD_URL", server.url)
        monkeypatch.setenv("RMPLUGINS_API_KEY", "k3y")
        executor = agent.SingleTurnAgentExecutor(remote_rm_url=str(ROOT / "integrations/openrlhf/reward_func.py"))
        assert executor.reward_func is not None
        outs = asyncio.run(executor._fetch_rewards_via_func([p["query"][0] for p in payloads],
                                                            [p["prompts"][0] for p in payloads], [""] * len(payloads)))
    want = armorm.score([c for c, _ in convs], [r for _, r in convs])
    assert [float(out["rewards"][0]) for out in outs] == want
    assert all(set(out["extra_logs"]) == {"rm_score", "template_recovered"} for out in outs)


def test_openrlhf_http_client_cannot_send_a_key(armorm, policy_tok):
    """OpenRLHF's built-in client sends no header, so a keyed server refuses it (as the README says: use
    reward_func.py with a key); its client gives up after its 5 tries with its own error."""
    agent = openrlhf_agent()
    conv, response = _conversations(1, seed=33)[0]
    payload = _openrlhf_payload(policy_tok, conv, response)
    with BackgroundServer(create_app(armorm, policy_tokenizer=policy_tok, api_key="k3y")) as server:
        executor = agent.SingleTurnAgentExecutor(remote_rm_url=server.url + "/get_reward")
        with pytest.raises(RuntimeError, match="Request error for 5 times"):
            asyncio.run(executor._fetch_rewards_via_http(payload["query"], payload["prompts"], payload["labels"]))
