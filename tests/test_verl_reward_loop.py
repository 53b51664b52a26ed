"""verl 0.9.1's own reward loop drives ``integrations/verl/reward_server.py`` against a live ``rmplugins serve``.

verl is installed by ``make setup`` with ``--no-deps`` (plus the few modules its client side imports: ray,
tensordict, omegaconf, codetiming, orjson); its trainer stack is not needed. What runs here is verl's code: its
loader of ``reward.custom_reward_function`` (``get_custom_reward_fn``), its registry of reward managers, the
``naive`` manager's ``run_single`` on a ``DataProto`` batch (decoding each response with the policy's tokenizer,
special tokens skipped, and awaiting a coroutine ``compute_score`` in its event loop), and ``assemble_rm_scores``.
"""

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_server import _conversations

import rmplugins
from rmplugins.serving import BackgroundServer, create_app

ROOT = Path(__file__).resolve().parents[1]
FILE = str(ROOT / "integrations/verl/reward_server.py")
sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmarks/peers: vLLM's own server, started as a process
try:
    import verl.trainer.ppo.reward as verl_reward
except ImportError as err:  # a failure, not a skip: `make setup` installs it
    raise ImportError(f"verl 0.9.1's client side is installed by `make setup` (pip install --no-deps verl==0.9.1 "
                      f"and the modules it imports); here: {err}") from err


@pytest.fixture(scope="module")
def armorm(tiny):
    return rmplugins.load_reward_model(tiny("armorm"), deterministic=True)


def _config(name, url, api_key):
    from omegaconf import OmegaConf

    return OmegaConf.create({"reward": {
        "custom_reward_function": {"path": FILE, "name": name, "reward_kwargs": {"url": url, "api_key": api_key}},
        "reward_manager": {"source": "register", "name": "naive"}}})


def _batch(tok, convs, prompt_width=96, response_width=64):
    """A rollout batch as verl's actors leave it: left-padded prompt ids, right-padded response ids ending in EOS,
    one attention mask over both; the conversation itself in ``extra_info`` (verl passes no prompt)."""
    from verl import DataProto

    eos = pad = tok.convert_tokens_to_ids("<|eot_id|>")  # the tiny policy pads with its EOS
    prompts, responses, masks = [], [], []
    for context, response in convs:
        p = tok.apply_chat_template(context, add_generation_prompt=True, tokenize=True, return_dict=False)
        r = tok(response, add_special_tokens=False)["input_ids"] + [eos]
        assert len(p) <= prompt_width and len(r) <= response_width, (len(p), len(r))
        prompts.append([pad] * (prompt_width - len(p)) + p)
        responses.append(r + [pad] * (response_width - len(r)))
        masks.append([0] * (prompt_width - len(p)) + [1] * (len(p) + len(r)) + [0] * (response_width - len(r)))
    n = len(convs)
    return DataProto.from_dict(
        tensors={"prompts": torch.tensor(prompts), "responses": torch.tensor(responses),
                 "attention_mask": torch.tensor(masks),
                 "input_ids": torch.cat([torch.tensor(prompts), torch.tensor(responses)], dim=1)},
        non_tensors={"data_source": np.array(["chat"] * n, dtype=object),
                     "reward_model": np.array([{"ground_truth": ""} for _ in range(n)], dtype=object),
                     "extra_info": np.array([{"prompt": list(c)} for c, _ in convs], dtype=object)})


def _short(n, seed):
    return [(c, r[:150]) for c, r in _conversations(n, seed=seed) if len(c) <= 2][:n]


@pytest.mark.parametrize("name", ["compute_score_async", "compute_score"])
def test_verl_naive_reward_manager_scores_a_rollout_batch(armorm, policy_tok, name):
    convs = _short(48, seed=41)
    with BackgroundServer(create_app(armorm, api_key="v3rl")) as server:
        config = _config(name, server.url + "/score", "v3rl")
        compute_score = verl_reward.get_custom_reward_fn(config)  # verl's loader: by path and name, kwargs bound
        manager_cls = verl_reward.resolve_reward_manager_cls(config)
        manager = manager_cls(config=config, tokenizer=policy_tok, compute_score=compute_score)
        assert manager_cls.__name__ == "NaiveRewardManager"
        assert manager.is_async_reward_score == (name == "compute_score_async")  # awaited, no thread per sample
        data = _batch(policy_tok, convs)

        async def score_all():  # what verl's reward loop worker does: run_single per sample, concurrently
            return await asyncio.gather(*(manager.run_single(data[i:i + 1]) for i in range(len(data))))

        results = manager.loop.run_until_complete(score_all())
    decoded = [policy_tok.decode(policy_tok(r, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
               for _, r in convs]
    want = armorm.score([c for c, _ in convs], decoded)
    assert [res["reward_score"] for res in results] == want  # deterministic model: bit for bit
    assert len(set(want)) == len(want)
    assert all(set(res["reward_extra_info"]) >= {"score", "rm_score"} for res in results)
    rm_scores = manager_cls.assemble_rm_scores(data, [res["reward_score"] for res in results])
    last = data.batch["attention_mask"][:, data.batch["prompts"].shape[1]:].sum(1) - 1
    assert rm_scores[torch.arange(len(data)), last].tolist() == pytest.approx(want, abs=0)
    assert int((rm_scores != 0).sum()) == len(data)  # one reward per response, at its last token


def test_verl_reward_without_prompt_or_with_a_wrong_key_fails_loudly(armorm, policy_tok):
    convs = _short(2, seed=42)
    with BackgroundServer(create_app(armorm, api_key="v3rl")) as server:
        config = _config("compute_score_async", server.url + "/score", "wrong")
        manager = verl_reward.resolve_reward_manager_cls(config)(
            config=config, tokenizer=policy_tok, compute_score=verl_reward.get_custom_reward_fn(config))
        data = _batch(policy_tok, convs)
        with pytest.raises(RuntimeError, match=r"refused the request \(401\)"):
            manager.loop.run_until_complete(manager.run_single(data[0:1]))
        data.non_tensor_batch["extra_info"] = np.array([{}, {}], dtype=object)
        with pytest.raises(ValueError, match="the prompt is missing"):
            manager.loop.run_until_complete(manager.run_single(data[0:1]))


def test_a_sample_the_model_rejects_gets_the_servers_fallback_reward_in_verl(armorm, policy_tok):
    """verl has no "no reward" value: a server started with ``--fallback-reward`` gives a sample the model rejects
    (a prompt ArmoRM cannot read whole) that score and ``no_reward`` = 1 in verl's ``reward_extra_info``; the
    batch's other samples keep their own scores."""
    convs = _short(12, seed=43)[:3]
    with BackgroundServer(create_app(armorm, max_sample_chars=10 ** 6, fallback_reward=-3.0)) as server:
        config = _config("compute_score_async", server.url + "/score", None)
        manager = verl_reward.resolve_reward_manager_cls(config)(
            config=config, tokenizer=policy_tok, compute_score=verl_reward.get_custom_reward_fn(config))
        data = _batch(policy_tok, convs)
        data.non_tensor_batch["extra_info"][1] = {"prompt": "word " * 20000}

        async def score_all():
            return await asyncio.gather(*(manager.run_single(data[i:i + 1]) for i in range(len(data))))

        results = manager.loop.run_until_complete(score_all())
    decoded = [policy_tok.decode(policy_tok(r, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
               for _, r in convs]
    good = armorm.score([convs[0][0], convs[2][0]], [decoded[0], decoded[2]])
    assert [res["reward_score"] for res in results] == [good[0], -3.0, good[1]]
    assert [res["reward_extra_info"]["no_reward"] for res in results] == [0.0, 1.0, 0.0]


@pytest.mark.vllm
def test_verl_reward_loop_classify_on_vllm_serve_with_the_plugin(tiny, policy_tok):
    """verl's own reward-model path, the one its trainer takes with ``reward.reward_model.enable`` and rollout
    ``vllm``: ``RewardLoopWorker.compute_score_disrm`` renders each rollout with the reward model's template, drops
    the BOS string and posts it to ``/classify`` (``use_activation: false``) of a vLLM server. Pointed at vLLM's own
    server started on ArmoRM's checkpoint (``--runner pooling``; nothing else: vLLM loads rmplugins' plugin from its
    entry point), it gets ArmoRM's reference scores, where vLLM alone cannot load the model."""
    from omegaconf import OmegaConf
    from peers import vllm_serve
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    path = tiny("armorm")
    armorm = rmplugins.load_reward_model(path, dtype="float32")
    convs = _short(12, seed=43)
    data = _batch(policy_tok, convs)
    data.non_tensor_batch["raw_prompt"] = np.array([list(c) for c, _ in convs] + [None], dtype=object)[:-1]
    with vllm_serve(path, "--runner", "pooling", "--enforce-eager") as server:
        config = OmegaConf.create({
            "actor_rollout_ref": {"model": {"path": tiny("policy"), "tokenizer_path": None}},
            "reward": {"reward_model": {"enable": True, "model_path": path, "rollout": {"name": "vllm"}},
                       "custom_reward_function": {"path": None, "name": None},
                       "reward_manager": {"source": "register", "name": "naive"}}})
        worker = RewardLoopWorker(config, reward_router_address=f"127.0.0.1:{server.port}")
        results = worker.loop.run_until_complete(worker.compute_score_batch(data))
    responses = [policy_tok.decode(policy_tok(r, add_special_tokens=False)["input_ids"] + [policy_tok.eos_token_id])
                 .replace(policy_tok.eos_token, "") for _, r in convs]
    want = armorm.score([c for c, _ in convs], responses)
    got = [res["reward_score"] for res in results]
    assert got == pytest.approx(want, abs=2e-5)
    assert max(want) - min(want) > 0.5
