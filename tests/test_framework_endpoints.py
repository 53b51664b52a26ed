"""vLLM's ``/classify`` and ``/pooling`` on ``rmplugins serve`` (verl's reward loop, AReaL) and slime's
``/remote_rm`` (issue 27, items 2 and 3).

verl 0.9.1's own ``RewardLoopWorker.compute_score_disrm`` drives the server exactly as it drives a vLLM reward
server (the reward model's template applied, BOS text dropped, ``use_activation: false``, ``probs[-1]``), for
ArmoRM and, with ``--group-size``, for GPM's group rewards. Request and response bodies are validated with vLLM's
own pydantic protocol classes. AReaL's ``AsyncRewardWrapper`` (installed ``--no-deps``; its package entered without
its ``__init__``, in a process of its own) runs ``integrations/areal/reward.py`` in its process pool. slime is not on
PyPI: its ``remote_rm`` (``slime/rollout/rm_hub/__init__.py`` as of 2026-06: one shared aiohttp session of 64
kept-alive connections, a 120 s total timeout a try, ``{"prompt", "response", "label"}``, ``await resp.json()``
taken as the reward, any failure retried after min(2^try, 30) + U(0, 1) s, ten tries) is run as it runs.
"""

import asyncio
import base64
import importlib
import importlib.util
import math
import os
import random
import struct
import sys

import aiohttp
import numpy as np
import pytest
from reference_helpers import close
from test_server import _conversations, _get, _post
from test_verl_reward_loop import _batch, _short

import rmplugins
from rmplugins.serving import BackgroundServer, create_app

vllm_classify = pytest.importorskip("vllm.entrypoints.pooling.classify.protocol")
vllm_pooling = importlib.import_module("vllm.entrypoints.pooling.pooling.protocol")
vllm_engine = importlib.import_module("vllm.entrypoints.serve.engine.protocol")


@pytest.fixture(scope="module")
def armorm(tiny):
    return rmplugins.load_reward_model(tiny("armorm"), device="cpu", deterministic=True)


def _rm_text(rm, conv, response):
    """What verl sends: the reward model's template over the conversation, its BOS text dropped."""
    text = rm.tokenizer.apply_chat_template(conv + [{"role": "assistant", "content": response}], tokenize=False)
    bos = rm.tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


def _worker(tiny, rm_path, port):
    from omegaconf import OmegaConf
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    config = OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": tiny("policy"), "tokenizer_path": None}},
        "reward": {"reward_model": {"enable": True, "model_path": rm_path, "rollout": {"name": "vllm"}},
                   "custom_reward_function": {"path": None, "name": None},
                   "reward_manager": {"source": "register", "name": "naive"}}})
    return RewardLoopWorker(config, reward_router_address=f"127.0.0.1:{port}")


def _decoded(tok, response):
    ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return tok.decode(ids).replace(tok.eos_token, "")


def test_verl_reward_loop_classify_against_rmplugins_serve(tiny, armorm, policy_tok):
    """verl's ``compute_score_disrm`` pointed at rmplugins serve (where it would point at ``vllm serve``): ArmoRM's
    real score for every rollout, which a vLLM classifier alone cannot give."""
    convs = _short(12, seed=51)
    data = _batch(policy_tok, convs)
    data.non_tensor_batch["raw_prompt"] = np.array([list(c) for c, _ in convs] + [None], dtype=object)[:-1]
    with BackgroundServer(create_app(armorm)) as server:
        worker = _worker(tiny, tiny("armorm"), server.port)
        results = worker.loop.run_until_complete(worker.compute_score_batch(data))
    want = armorm.score([c for c, _ in convs], [_decoded(policy_tok, r) for _, r in convs])
    assert [r["reward_score"] for r in results] == pytest.approx(want, abs=1e-6)
    assert max(want) - min(want) > 0.5


def test_verl_reward_loop_gets_gpm_group_rewards(tiny, policy_tok):
    """verl sends one sample per request and no group: with --group-size the server keys each sample by its
    prompt (recovered from the reward model's template) and answers with its GPO score within the group."""
    gpm = rmplugins.load_reward_model(tiny("gpm"), device="cpu")
    contexts = [c for c, _ in _short(12, seed=52)][:3]
    responses = [r for _, r in _short(30, seed=53)][:12]
    assert len(contexts) == 3 and len(responses) == 12
    convs = [(contexts[i // 4], responses[i]) for i in range(12)]
    order = np.random.default_rng(0).permutation(12)
    convs = [convs[i] for i in order]
    data = _batch(policy_tok, convs)
    data.non_tensor_batch["raw_prompt"] = np.array([list(c) for c, _ in convs] + [None], dtype=object)[:-1]
    with BackgroundServer(create_app(gpm, group_size=4, group_timeout=60)) as server:
        worker = _worker(tiny, tiny("gpm"), server.port)
        results = worker.loop.run_until_complete(worker.compute_score_batch(data))
    decoded = [_decoded(policy_tok, r) for _, r in convs]
    for g, context in enumerate(contexts):
        members = [i for i, (c, _) in enumerate(convs) if c is context]
        want = gpm.rank(context, [decoded[i] for i in members]).scores
        assert all(close(results[i]["reward_score"], w) for i, w in zip(members, want))


def test_classify_and_pooling_bodies_are_vllms(armorm, tiny):
    conv, response = _conversations(1, seed=54)[0]
    text = _rm_text(armorm, conv, response)
    score = armorm.score([conv], [response])[0]
    details = armorm.score_details([conv], [response])
    with BackgroundServer(create_app(armorm)) as server:
        def classify(body, route="/classify"):
            status, answer = _post(server.url + route, body)
            assert status == 200, answer
            return answer

        forms = {  # every form vLLM's request classes accept, each validated by them first
            "text": {"model": "m", "input": text, "use_activation": False},
            "texts": {"input": [text, text], "use_activation": False},
            "ids": {"input": armorm.tokenizer(text, add_special_tokens=False)["input_ids"], "use_activation": False},
            "id lists": {"input": [armorm.tokenizer(text, add_special_tokens=False)["input_ids"]],
                         "use_activation": False},
        }
        for name, body in forms.items():
            vllm_classify.ClassificationCompletionRequest.model_validate(body)
            answer = vllm_classify.ClassificationResponse.model_validate(classify(body))
            assert [d.index for d in answer.data] == list(range(len(answer.data)))
            for d in answer.data:
                assert d.num_classes == 1 and close(d.probs[-1], score), name
        ids = forms["ids"]["input"]
        assert classify(forms["ids"])["usage"]["prompt_tokens"] == len(ids)
        chat = {"messages": conv + [{"role": "assistant", "content": response}], "use_activation": False}
        vllm_classify.ClassificationChatRequest.model_validate(chat)
        assert close(vllm_classify.ClassificationResponse.model_validate(classify(chat)).data[0].probs[-1], score)
        activated = classify({"input": text})  # vLLM's default: the activation (sigmoid) applied
        assert close(activated["data"][0]["probs"][-1], 1 / (1 + math.exp(-score)))

        pool = {"input": text}
        vllm_pooling.PoolingCompletionRequest.model_validate(pool)
        answer = vllm_pooling.PoolingResponse.model_validate(classify(pool, "/pooling"))
        vector = answer.data[0].data
        assert len(vector) == 39 and close(vector[0], score)
        assert vector[1:20] == pytest.approx(details.rewards[0].tolist(), abs=1e-5)
        assert vector[20:] == pytest.approx(details.gating_output[0].tolist(), abs=1e-5)
        encoded = classify({"input": text, "encoding_format": "base64"}, "/pooling")["data"][0]["data"]
        assert list(struct.unpack("<39f", base64.b64decode(encoded))) == pytest.approx(vector, abs=1e-6)

        for body, words in [({"input": "plain text, no template"}, "chat template"),
                            ({"messages": conv}, "last message must be the assistant's"),
                            ({"input": text, "normalize": True}, "use_activation"),
                            ({"input": [text, 5]}, "mixes strings and token ids"),
                            ({"input": [10 ** 9]}, "token ids must lie in")]:
            status, error = _post(server.url + "/classify", body)
            assert status == 400, (body, error)
            assert words in vllm_engine.ErrorResponse.model_validate(error).error.message
        status, error = _post(server.url + "/classify", {"input": text, "encoding_format": "base64"})
        assert status == 200  # vLLM's classify ignores pooling-only fields as extras
    with BackgroundServer(create_app(armorm, api_key="k")) as server:
        status, error = _post(server.url + "/pooling", {"input": text})
        assert status == 401 and vllm_engine.ErrorResponse.model_validate(error).error.code == 401


def test_pooling_gives_a_prms_step_rewards(tiny):
    prm = rmplugins.load_reward_model(tiny("prm"), device="cpu")
    question, response = "What is 12 times 3?", "12 times 3 is 36.\n\nSo the answer is 36."
    steps = prm.score_steps([question], [response])[0]
    with BackgroundServer(create_app(prm)) as server:
        status, answer = _post(server.url + "/pooling", {"messages": [
            {"role": "user", "content": question}, {"role": "assistant", "content": response}]})
    assert status == 200
    vector = vllm_pooling.PoolingResponse.model_validate(answer).data[0].data
    assert len(steps) == 2 and vector[1:] == pytest.approx(steps, abs=1e-5)
    assert close(vector[0], prm.score([question], [response])[0])


def test_areal_reward_wrapper_runs_the_integration_against_classify(armorm, policy_tok, tmp_path):
    """AReaL's ``AsyncRewardWrapper`` runs ``integrations.areal.reward.rmplugins_reward`` in its process pool (in a
    process of its own: ``tests/areal_reward_script.py``), with the policy-templated prompt text and the decoded
    completion AReaL passes; the server (``--policy-tokenizer``) recovers the conversation and answers ArmoRM's
    score, and ``--fallback-reward`` for the one it cannot read whole."""
    import json
    import subprocess

    convs = _conversations(4, seed=55)
    convs.insert(2, ([{"role": "user", "content": "word " * 20000}], "an answer"))  # one ArmoRM cannot read whole
    rollouts = []
    for conv, response in convs:
        prompt_ids = policy_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
        completion_ids = policy_tok(response, add_special_tokens=False)["input_ids"] + [policy_tok.eos_token_id]
        rollouts.append([policy_tok.decode(prompt_ids), policy_tok.decode(completion_ids), prompt_ids,
                         completion_ids])
    (tmp_path / "rollouts.json").write_text(json.dumps(rollouts))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "areal_reward_script.py")
    with BackgroundServer(create_app(armorm, policy_tokenizer=policy_tok, max_sample_chars=10 ** 6,
                                     fallback_reward=-4.0)) as server:
        env = {**os.environ, "REWARD_MODEL_SERVICE_URL": server.url + "/classify"}
        run = subprocess.run([sys.executable, script, str(tmp_path / "rollouts.json")], capture_output=True,
                             text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    rewards = json.loads(run.stdout.strip().splitlines()[-1])
    good = [i for i in range(len(convs)) if i != 2]
    want = armorm.score([convs[i][0] for i in good], [_decoded(policy_tok, convs[i][1]) for i in good])
    assert [rewards[i] for i in good] == pytest.approx(want, abs=1e-6)
    assert rewards[2] == -4.0  # the server's --fallback-reward: AReaL would re-raise the refusal and stop


def _slime(url, samples, max_retries=10):
    """slime's ``remote_rm`` for each of ``samples`` at once (as ``batched_async_rm`` gathers a group), through one
    shared session as its rm_hub keeps it; its retries and their back-off as it has them."""
    async def run():
        connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def remote_rm(sample):
                payload = {"prompt": sample["prompt"], "response": sample["response"], "label": sample["label"]}
                for attempt in range(max_retries):
                    try:
                        async with session.post(url, json=payload) as resp:
                            resp.raise_for_status()
                            return await resp.json()
                    except Exception:
                        if attempt + 1 >= max_retries:
                            raise
                        await asyncio.sleep(min(2 ** attempt, 30) + random.random())
            return await asyncio.gather(*(remote_rm(s) for s in samples))
    return asyncio.run(run())


def test_slime_remote_rm(tiny, armorm, policy_tok):
    """A bare number per sample: ArmoRM's score (prompt as text with the policy template, or as messages); and,
    for pair-PM with --group-size and slime's --group-rm (a group's requests together), the group reward."""
    convs = _conversations(4, seed=56)
    samples = [{"prompt": policy_tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
                "response": r, "label": "42"} for c, r in convs]
    samples.append({"prompt": convs[0][0], "response": convs[0][1], "label": None})
    with BackgroundServer(create_app(armorm, policy_tokenizer=policy_tok)) as server:
        rewards = _slime(server.url + "/remote_rm", samples)
    want = armorm.score([c for c, _ in convs], [r for _, r in convs])
    assert all(isinstance(r, float) for r in rewards)
    assert rewards == pytest.approx(want + want[:1], abs=1e-6)

    pair_pm = rmplugins.load_reward_model(tiny("pair_pm"), device="cpu")
    context = convs[1][0]
    group = [r for _, r in _conversations(4, seed=57)]
    prompt = policy_tok.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    with BackgroundServer(create_app(pair_pm, policy_tokenizer=policy_tok, group_size=4, group_timeout=20)) as server:
        rewards = _slime(server.url + "/remote_rm", [{"prompt": prompt, "response": r, "label": ""} for r in group])
    want = pair_pm.rank(context, group, "round_robin").scores
    assert all(close(g, w) for g, w in zip(rewards, want))
    with BackgroundServer(create_app(pair_pm, policy_tokenizer=policy_tok)) as server:  # no groups: vs the label
        (reward,) = _slime(server.url + "/remote_rm", [{"prompt": prompt, "response": group[0], "label": group[1]}])
    assert close(reward, pair_pm.compare([context], [group[0]], [group[1]])[0])


def test_a_sample_the_model_rejects_gets_the_fallback_reward_on_every_route(armorm, policy_tok):
    """``--fallback-reward X`` for the clients that have no "no reward" value and stop their run on a refused
    sample: a sample the model rejects (here a prompt ArmoRM cannot read whole; a judge without a verdict alike) is
    answered X with ``no_reward`` = 1, the request's other samples their own rewards, on OpenRLHF's route (driven by
    OpenRLHF's own HTTP client), verl's ``/score``, vLLM's ``/classify`` (validated by vLLM's classes) and slime's
    ``/remote_rm``; a client asking for a partial answer still gets null; without the option the refusal says how to
    get one or the other."""
    from test_openrlhf_client import openrlhf_agent
    from test_server import _openrlhf_payload

    convs = _conversations(2, seed=58)
    long = [{"role": "user", "content": "word " * 20000}]
    score = armorm.score([c for c, _ in convs], [r for _, r in convs])
    long_text = policy_tok.apply_chat_template(long, tokenize=False, add_generation_prompt=True)
    with BackgroundServer(create_app(armorm, policy_tokenizer=policy_tok, max_sample_chars=10 ** 6,
                                     fallback_reward=-2.5)) as server:
        payloads = [_openrlhf_payload(policy_tok, c, r) for c, r in [convs[0], (long, "an answer"), convs[1]]]
        executor = openrlhf_agent().SingleTurnAgentExecutor(remote_rm_url=server.url + "/get_reward")

        async def rollouts():
            return await asyncio.gather(*(executor._fetch_rewards_via_http(p["query"], p["prompts"], p["labels"])
                                          for p in payloads))

        answers = [a for (a,) in asyncio.run(rollouts())]
        assert [a["rewards"][0] for a in answers] == [score[0], -2.5, score[1]]
        assert [a["extra_logs"]["no_reward"][0] for a in answers] == [0.0, 1.0, 0.0]
        # the policy template was undone for every sample, the rejected one too: its rate is not skewed by refusals
        assert [a["extra_logs"]["template_recovered"][0] for a in answers] == [1.0, 1.0, 1.0]
        body = {"prompts": [convs[0][0], long], "completions": [convs[0][1], "an answer"]}
        status, answer = _post(server.url + "/score", body)  # verl's integrations/verl/reward_server.py
        assert status == 200 and answer["rewards"] == [score[0], -2.5] and "errors" not in answer
        assert answer["extra_logs"]["no_reward"] == [0.0, 1.0] and answer["extra_logs"]["rm_score"][1] == 0.0
        status, answer = _post(server.url + "/score", {**body, "partial": True})  # rmplugins' TRL client
        assert answer["rewards"] == [score[0], None] and "too long" in answer["errors"][1]
        status, answer = _post(server.url + "/classify", {"input": long_text + "an answer", "use_activation": False})
        assert vllm_classify.ClassificationResponse.model_validate(answer).data[0].probs == [-2.5]  # AReaL, verl
        (reward,) = _slime(server.url + "/remote_rm", [{"prompt": long_text, "response": "an answer", "label": ""}])
        assert reward == -2.5  # answered at once: slime retries nothing
        metrics = _get(server.url + "/metrics.json")[1]
        assert metrics["samples_fallback_reward"] == 4 and metrics["samples_rejected"] == 5
        assert _get(server.url + "/health")[1]["fallback_reward"] == -2.5
    with BackgroundServer(create_app(armorm, policy_tokenizer=policy_tok, max_sample_chars=10 ** 6)) as server:
        status, answer = _post(server.url + "/score", body)
        assert status == 422 and "too long" in answer["error"] and "--fallback-reward X" in answer["error"]
        with pytest.raises(aiohttp.ClientResponseError) as refused:  # slime tries again, is refused again, stops
            _slime(server.url + "/remote_rm", [{"prompt": long_text, "response": "an answer", "label": ""}], 2)
        assert refused.value.status == 422
        metrics = _get(server.url + "/metrics.json")[1]  # the /score request's refusal, then slime's two
        assert metrics["errors"] == {"422": 3} and metrics["refusals"] == {"too_long": 3}
    with pytest.raises(ValueError, match="--fallback-reward must be a finite number .*, got nan"):
        create_app(armorm, fallback_reward=float("nan"))


def _doc_blocks() -> dict:
    """docs/server.md's configurations: the fenced block after each ``<!-- config:NAME -->``."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- config:(\w+) -->\n```\w*\n(.*?)```", text, re.S)}


def test_the_docs_configurations_are_the_tested_ones(tiny, monkeypatch):
    """Each framework's configuration in docs/server.md: the server flags parse with rmplugins' own parser, the
    endpoints are the app's routes the tests drive, verl's lines load our coroutine through verl's own loader,
    AReaL's reward_fn path imports, and the TRL snippet runs (on CPU)."""
    import argparse
    import re
    import shlex
    from pathlib import Path

    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from rmplugins.serving import cli

    blocks = _doc_blocks()
    assert set(blocks) == {"openrlhf", "verl", "areal", "slime", "nemo_gym", "trl"}
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    routes = {r.path for r in create_app(rmplugins.load_reward_model(tiny("bt"), device="cpu")).routes}
    for name in ("openrlhf", "areal", "slime"):
        serve = next(line for line in blocks[name].splitlines() if line.startswith("rmplugins serve"))
        args = parser.parse_args(shlex.split(serve)[1:])
        assert args.policy_tokenizer and args.port
        urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", blocks[name])
        assert urls and all(int(port) == args.port and path in routes for port, path in urls), name
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("## Serve every framework"):readme.index("## Models")]
    assert {path for path in re.findall(r"http://127\.0\.0\.1:5000(/\w+)", table)} == \
        {"/get_reward", "/classify", "/remote_rm", "/score"} <= routes
    openrlhf = blocks["openrlhf"]
    assert re.search(r"--group-size (\d+)", openrlhf).group(1) == \
        re.search(r"--rollout.n_samples_per_prompt (\d+)", openrlhf).group(1)
    assert "/remote_rm --group-rm" in blocks["slime"]
    nemo_gym = blocks["nemo_gym"]  # the server, then NeMo-Gym's config of the copied directory naming its /score
    args = parser.parse_args(shlex.split(nemo_gym.splitlines()[0])[1:])
    copied = Path(__file__).resolve().parents[1] / re.search(r"cp -r (\S+) ", nemo_gym).group(1)
    config = re.search(r"config_paths=\[resources_servers/(\S+?)\]", nemo_gym).group(1)
    assert args.group_size and copied.is_dir() and (copied.parent / config).is_file()
    assert f"url: http://127.0.0.1:{args.port}/score" in (copied.parent / config).read_text()

    verl = blocks["verl"]
    assert re.search(r"RMPLUGINS_SCORE_URL=http://127.0.0.1:\d+(/\w+)", verl).group(1) in routes
    dotlist = [w for w in shlex.split(verl.replace("\\\n", " ")) if "=" in w and w.startswith("reward.")]
    config = OmegaConf.merge(OmegaConf.create({"reward": {"custom_reward_function": {"reward_kwargs": {}}}}),
                             OmegaConf.from_dotlist(dotlist))
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fn = get_custom_reward_fn(config)
    assert asyncio.iscoroutinefunction(fn) or asyncio.iscoroutinefunction(getattr(fn, "func", None))

    module, _, name = re.search(r'reward_fn = "([\w.]+)"', blocks["areal"]).group(1).rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))

    snippet = blocks["trl"].replace("GRPOConfig(", "GRPOConfig(use_cpu=True, bf16=False, output_dir='/tmp/x', ")
    scope: dict = {}
    exec(compile(snippet, "docs/server.md:trl", "exec"), scope)
    assert len(list(scope["objectives"])) == 2 and scope["args"].reward_weights == [0.5, 1.0, 2.0]
