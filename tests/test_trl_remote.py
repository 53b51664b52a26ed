"""TRL 1.16's paths to a reward server (issue 27, item 4): ``AsyncRemoteRewardFunction`` and ``RemoteObjectives``
(ArmoRM's objectives as separate reward functions) pickled into the rollout process of TRL's async GRPO and scored
there by TRL's own ``_score_group``; and a real GRPO run whose reward functions are ArmoRM's objectives with
``multi_objective_aggregation="normalize_then_sum"`` (GDPO) and ``reward_weights``, one server request per sample."""

import multiprocessing
import pickle
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from test_server import _get

import rmplugins
from rmplugins.serving import BackgroundServer, create_app
from rmplugins.trl import AsyncRemoteRewardFunction, RemoteObjectives

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).parent))  # the spawned child imports trl_async_grpo_child from here
OBJECTIVES = ["helpsteer-helpfulness", "beavertails-is_safe"]


@pytest.fixture(scope="module")
def armorm(tiny):
    return rmplugins.load_reward_model(tiny("armorm"), device="cpu", deterministic=True)


def test_async_grpo_rollout_process_scores_through_the_server(tiny, armorm):
    import trl_async_grpo_child

    convs = [[{"role": "user", "content": q}] for q in ("Name a color.", "Say hello.")]
    answers = [["Blue is one.", "Red.", "Green, like grass."], ["Hello!", "Hi there, friend.", "Greetings."]]
    groups = [([conv] * 3, [[{"role": "assistant", "content": a}] for a in group])
              for conv, group in zip(convs, answers)]
    app = create_app(armorm, policy_tokenizer=tiny("policy"), objective_logs=True)
    with BackgroundServer(app) as server:
        remote = AsyncRemoteRewardFunction(server.url, policy_tokenizer=Path(tiny("policy")))
        objectives = RemoteObjectives(server.url, OBJECTIVES, policy_tokenizer=Path(tiny("policy")))
        funcs = [remote, *objectives]
        payload = pickle.dumps(funcs)  # what AsyncRolloutWorker.start() checks before it spawns
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        child = ctx.Process(target=trl_async_grpo_child.score_groups, args=(payload, groups, results))
        child.start()
        (scored, sessions), cuda = results.get(timeout=600)
        child.join(60)
        requests = _get(server.url + "/metrics.json")[1]["requests"]
    assert child.exitcode == 0 and cuda == ""
    assert sessions == [1, 1]  # one aiohttp session per event loop, reused by both groups
    assert requests == 4  # per group: the reward, and one request for both objectives
    for (prompts, completions), metrics in zip(groups, scored):
        texts = [c[0]["content"] for c in completions]
        details = armorm.score_details(prompts, texts)
        for i, m in enumerate(metrics):
            assert m[f"rewards/{remote.__name__}"] == pytest.approx(details.score[i], abs=1e-6)
            for k, name in enumerate(OBJECTIVES):
                column = armorm.objective_names.index(name)
                assert m[f"rewards/{objectives.functions[k].__name__}"] == pytest.approx(
                    float(details.rewards[i, column]), abs=1e-5)
            total = details.score[i] + sum(float(details.rewards[i, armorm.objective_names.index(n)])
                                           for n in OBJECTIVES)
            assert m["reward"] == pytest.approx(total, abs=1e-4)  # TRL's sum over the reward functions


def test_grpo_gdpo_on_armorm_objectives(tiny, armorm, tmp_path):
    """A real GRPO step with async reward functions: the remote reward and two objectives, each normalised within
    its group then weighted (GDPO); every reward TRL recorded is the server's for that completion, and both
    objectives come from one request per sample."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    policy = tiny("policy")
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(policy)
    conv = [{"role": "user", "content": "Say hello."}]
    app = create_app(armorm, policy_tokenizer=tok, objective_logs=True)
    with BackgroundServer(app) as server:
        objectives = RemoteObjectives(server.url, OBJECTIVES, policy_tokenizer=tok)
        remote = AsyncRemoteRewardFunction(server.url, policy_tokenizer=tok)
        args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, logging_steps=1, report_to="none",
                          use_cpu=True, bf16=False, save_strategy="no", learning_rate=1e-5, seed=0, disable_tqdm=True,
                          per_device_train_batch_size=4, num_generations=2, max_completion_length=8, beta=0.0,
                          multi_objective_aggregation="normalize_then_sum", reward_weights=[0.5, 1.0, 2.0])
        trainer = GRPOTrainer(model=model, reward_funcs=[remote, *objectives], args=args,
                              train_dataset=Dataset.from_dict({"prompt": [conv] * 4}), processing_class=tok)
        trainer.train()
        metrics = _get(server.url + "/metrics.json")[1]
    completions = [c[0]["content"] if isinstance(c, list) else c for c in trainer._logs["completion"]]
    assert len(completions) == 4
    details = armorm.score_details([conv] * 4, completions)
    for func, name in zip(objectives, OBJECTIVES):
        want = details.rewards[:, armorm.objective_names.index(name)].tolist()
        assert list(trainer._logs["rewards"][func.__name__]) == pytest.approx(want, abs=1e-5)
    assert list(trainer._logs["rewards"][remote.__name__]) == pytest.approx(details.score, abs=1e-5)
    assert metrics["requests"] == 2 and metrics["samples"] == 8  # the reward's request, one for both objectives


def test_remote_objectives_refuse_what_cannot_work(tiny, armorm):
    import asyncio

    with pytest.raises(ValueError, match="name one objective twice"):
        RemoteObjectives("http://127.0.0.1:1", ["score", "score"])
    with pytest.raises(ValueError, match="a list of ArmoRM objective names"):
        RemoteObjectives("http://127.0.0.1:1", "helpsteer-helpfulness")
    with pytest.raises(ValueError, match=r"\['clip', 'normalize'\] would not apply"):  # before: silently unshaped
        RemoteObjectives("http://127.0.0.1:1", ["score"], normalize=True, clip=1.0)
    with BackgroundServer(create_app(armorm)) as server:  # no --objective-logs
        func = RemoteObjectives(server.url, OBJECTIVES[:1]).functions[0]
        with pytest.raises(RuntimeError, match="--objective-logs"):
            asyncio.run(func(prompts=["Hi"], completions=["Hello"]))
