"""A model whose forward gives NaN or infinity raises, naming the model, its dtype and what to try: never a reward of
None (read as a judge's missing verdict), 0 (TRL's sum over reward functions) or NaN. The checkpoints are the tiny
real-layout ones with NaN written into their weights on disk, loaded the way a hub id is; the server is a real one on
localhost."""

import asyncio
import shutil
from pathlib import Path

import engines
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_server import INTEGRATIONS, ROOT, _get, _load_by_path, _openrlhf_payload, _post_all

import rmplugins
from rmplugins import JudgeSpec
from rmplugins.finite import NonFiniteOutput, check_finite
from rmplugins.inputs import to_conversation
from rmplugins.serving import BackgroundServer, create_app
from rmplugins.trl import AsyncRemoteRewardFunction, RewardFunction
from rmplugins.trl.remote import RemoteRewardError

PROMPT = [{"role": "user", "content": "Describe a sunset."}]
CLEAN = "Orange and pink light over the sea."
POISONED = "Zebras quietly juggle xylophones."


def _with_nan_embeddings(src: str, dst: Path, rows: list[int] | None = None) -> str:
    """A copy of checkpoint ``src`` whose token embeddings hold NaN (only ``rows``, or all of them)."""
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    name = next(k for k in weights if k.endswith(("embed_tokens.weight", "word_embeddings.weight")))
    table = weights[name].clone()
    table[rows if rows is not None else slice(None)] = float("nan")
    weights[name] = table
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return str(dst)


def bt_with_nan_tokens(tiny, dst: Path, completion: str = POISONED) -> str:
    """The tiny Bradley-Terry checkpoint with NaN embeddings for the tokens of ``completion`` that a conversation
    of :data:`PROMPT` and :data:`CLEAN` does not hold: a forward gives NaN exactly where ``completion`` is read."""
    healthy = rmplugins.load_reward_model(tiny("bt"), device="cpu")
    clean_ids = set(healthy.encode_row(to_conversation(PROMPT, CLEAN)))
    rows = sorted(set(healthy.encode_row(to_conversation(PROMPT, completion))) - clean_ids)
    assert rows
    return _with_nan_embeddings(tiny("bt"), dst, rows)


@pytest.mark.parametrize("kind", ["bt", "armorm", "prm", "pair_pm", "pairrm", "gpm"])
def test_nan_weights_raise_in_every_family_and_every_call(kind, tiny, tmp_path):
    rm = rmplugins.load_reward_model(_with_nan_embeddings(tiny(kind), tmp_path / kind), device="cpu")
    prompts, a, b = [PROMPT] * 2, [CLEAN, POISONED], [POISONED, CLEAN]
    calls = [lambda: rm.rank(PROMPT, [CLEAN, POISONED, "A third one."])]
    if rm.pointwise:
        calls += [lambda: rm.score(prompts, a), lambda: rm.score_rows(prompts, a)]
    else:
        calls += [lambda: rm.compare(prompts, a, b), lambda: rm.compare_rows(prompts, a, b)]
    for call in calls:
        with pytest.raises(NonFiniteOutput, match=rf"the {kind} model .* gave \d+ NaN values .* in float32: no "
                                                  r"reward is returned rather than a wrong one; its checkpoint may "
                                                  r"hold NaN"):
            call()


LOGITS = JudgeSpec(template="Question: {prompt}\n\nAnswer: {response}\n\nIs it helpful? Yes or No.",
                   verdicts={"Yes": 1.0, "No": 0.0}, name="yes-no")
GENERATING = JudgeSpec(template="{prompt} {response}", readout="generate", extract=r"Score: (\d)", max_new_tokens=4)


@pytest.mark.parametrize("engine, spec", [("transformers", LOGITS), ("transformers", GENERATING),
                                          pytest.param("vllm", GENERATING, marks=pytest.mark.vllm)],
                         ids=["logits", "generate", "generate-vllm"])
def test_judges_raise_whether_they_read_logits_or_generate(engine, spec, tiny, tmp_path):
    """A judge reading logits gets NaN verdict probabilities; a generating one NaN next-token scores, on which
    greedy decoding (transformers' and vLLM's) writes token 0 on and on: an answer without a verdict, a NaN score
    that is a generating judge's own no-verdict marker. Both raise instead. (A logits judge on vLLM reads prompt
    log-probabilities through the same checked call as every family.)"""
    rm = engines.load(_with_nan_embeddings(tiny("genrm_qwen3"), tmp_path / "judge"), engine, kind="genrm", judge=spec)
    try:
        assert rm.nan_is_no_verdict == (spec is GENERATING)
        with pytest.raises(NonFiniteOutput, match=r"the (genrm model .*|judge on vLLM) gave \d+ NaN values \(1 of 1 "
                                                  r"rows"):
            rm.score_rows([PROMPT], [CLEAN])
    finally:
        engines.close(rm)


def test_one_poisoned_token_fails_its_own_request_only(tiny, tmp_path, policy_tok):
    """Only the tokens of one completion are NaN: a call holding it raises, a clean one gets the unpoisoned
    model's reward bit for bit; through a real server its request gets a 500 naming the fault, the requests batched
    with it their rewards, and the server stays up."""
    healthy = rmplugins.load_reward_model(tiny("bt"), device="cpu", deterministic=True)  # whatever the batch
    rm = rmplugins.load_reward_model(bt_with_nan_tokens(tiny, tmp_path / "bt"), device="cpu", deterministic=True)
    assert rm.score([PROMPT], [CLEAN]) == healthy.score([PROMPT], [CLEAN])
    with pytest.raises(NonFiniteOutput, match=r"1 of 2 rows, first row 1"):
        rm.score_rows([PROMPT] * 2, [CLEAN, POISONED])
    with pytest.raises(NonFiniteOutput):  # TRL's step stops with the reason instead of training on a reward of 0
        RewardFunction(rm)(prompts=[PROMPT] * 2, completions=[CLEAN, POISONED])

    payloads = [_openrlhf_payload(policy_tok, PROMPT, r) for r in (CLEAN, POISONED, CLEAN)]
    with BackgroundServer(create_app(rm, policy_tokenizer=policy_tok, max_wait_ms=50)) as server:
        answers = asyncio.run(_post_all(server.url + "/get_reward", payloads, 3))
        assert [status for status, _ in answers] == [200, 500, 200], answers
        assert answers[0][1]["rewards"] == answers[2][1]["rewards"] == healthy.score([PROMPT], [CLEAN])
        assert answers[1][1]["error"].startswith("model fault: NonFiniteOutput: the bt model")
        assert answers[1][1]["fault"] == "non_finite" and "NaN" in answers[1][1]["error"]
        assert _get(server.url + "/health")[0] == 200
        # rmplugins' own client stops at once (no retry helps) instead of leaving the rows' rewards None
        remote = AsyncRemoteRewardFunction(server.url, policy_tokenizer=policy_tok, retries=3)
        with pytest.raises(RemoteRewardError, match=r"every retry would too.*NonFiniteOutput"):
            asyncio.run(remote(prompts=[PROMPT] * 2, completions=[CLEAN, POISONED]))


@pytest.mark.parametrize("framework", ["openrlhf", "verl", "areal"])
def test_the_frameworks_client_files_stop_at_a_broken_model_without_retrying(framework, tiny, tmp_path, policy_tok,
                                                                            monkeypatch):
    """OpenRLHF's and verl's files retry a 500 (a server restarting); a 500 naming a fault fails at once with the
    server's reason, as a refused request does (before: five attempts with back-off, then "unreachable")."""
    file, variable, route, _ = INTEGRATIONS[framework]
    rm = rmplugins.load_reward_model(bt_with_nan_tokens(tiny, tmp_path / "bt"), device="cpu")
    prompt_text = policy_tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    with BackgroundServer(create_app(rm, policy_tokenizer=policy_tok)) as server:
        monkeypatch.setenv(variable, server.url + route)
        monkeypatch.setenv("RMPLUGINS_REWARD_RETRIES", "5")
        module = _load_by_path(ROOT / file, f"{framework}_reward_file")
        if hasattr(module, "time"):
            monkeypatch.setattr(module.time, "sleep", lambda s: pytest.fail("retried a broken model"))
        calls = {"openrlhf": lambda: module.reward_func([prompt_text + POISONED], [prompt_text], [""]),
                 "verl": lambda: module.compute_score("ds", POISONED, "", {"prompt": PROMPT}),
                 "areal": lambda: module.rmplugins_reward(prompt_text, POISONED)}
        with pytest.raises(RuntimeError, match=r"\(500\): .*NonFiniteOutput|answered 500: .*NonFiniteOutput"):
            calls[framework]()


def test_a_group_with_a_broken_forward_is_a_fault_not_a_refusal_given_the_fallback_reward(tiny, tmp_path,
                                                                                          policy_tok):
    """GPM ranks a group in one call: a NaN in it fails the group's requests with a 500, even with
    --fallback-reward (which answers refusals only): before, any error of a group became a 422 refusal, and so the
    fallback reward."""
    healthy = rmplugins.load_reward_model(tiny("gpm"), device="cpu")
    clean_ids = set(healthy.encode(to_conversation(PROMPT, CLEAN).messages)[0])
    rows = sorted(set(healthy.encode(to_conversation(PROMPT, POISONED).messages)[0]) - clean_ids)
    rm = rmplugins.load_reward_model(_with_nan_embeddings(tiny("gpm"), tmp_path / "gpm", rows), device="cpu")
    payloads = [_openrlhf_payload(policy_tok, PROMPT, r) for r in (CLEAN, POISONED)]
    app = create_app(rm, policy_tokenizer=policy_tok, group_size=2, group_timeout=60, fallback_reward=-5.0)
    with BackgroundServer(app) as server:
        answers = asyncio.run(_post_all(server.url + "/get_reward", payloads, 2))
        assert [status for status, _ in answers] == [500, 500], answers
        assert all(body["fault"] == "non_finite" for _, body in answers)
        metrics = _get(server.url + "/metrics.json")[1]
    assert metrics["samples_fallback_reward"] == 0


def test_the_check_itself():
    nan, inf = float("nan"), float("inf")
    check_finite({"score": torch.tensor([1.0, 2.0]), "ids": torch.tensor([1, 2])}, model="m", dtype=torch.float32)
    check_finite(torch.tensor([1.0, nan]), model="m", dtype=torch.float32, nan_allowed=True)  # a judge's marker
    with pytest.raises(NonFiniteOutput, match=r"m gave 1 infinite values \(1 of 2 rows, first row 1\)"):
        check_finite(torch.tensor([nan, -inf]), model="m", dtype=torch.float32, nan_allowed=True)
    with pytest.raises(NonFiniteOutput, match=r"gave 1 NaN, 2 infinite values \(2 of 3 rows, first row 0\) in "
                                              r"float16: .* float16 overflows above 65,504"):
        check_finite((torch.zeros(3, 2), [torch.tensor([[nan, inf], [0.0, 0.0], [inf, 1.0]])]), model="m",
                     dtype=torch.float16)
    assert issubclass(NonFiniteOutput, RuntimeError) and not issubclass(NonFiniteOutput, ValueError)


def test_rmplugins_serve_refuses_to_start_on_a_broken_model(tiny, tmp_path):
    """One probe sample before /health answers: a model whose every forward gives NaN stops the start with the
    reason (exit 2), before a trainer spends its first rollouts on it."""
    import subprocess
    import sys

    path = _with_nan_embeddings(tiny("bt"), tmp_path / "bt")
    run = subprocess.run([sys.executable, "-m", "rmplugins", "serve", "--model", path, "--port", "0"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "rmplugins serve: the bt model" in run.stderr and "NaN values" in run.stderr
    assert "serving on" not in run.stderr

