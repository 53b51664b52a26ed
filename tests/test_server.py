"""The OpenRLHF reward server, driven over real localhost HTTP the way OpenRLHF's rollout actors do it:
aiohttp, a fresh session per request, one sample per request, hundreds in flight."""

import asyncio
import importlib.util
import json
import random
import threading
from pathlib import Path

import aiohttp
import pytest

import rmplugins
from rmplugins.serving import BackgroundServer, create_app, reference_from_label

ROOT = Path(__file__).resolve().parents[1]
KEY = "s3cret-test-key"
WORDS = "the answer is good helpful python code list paris france weather today because example".split()


def _conversations(n, seed=0):
    """Varied prompts: single-turn, system messages, multi-turn; varied response lengths."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    out = []
    for i in range(n):
        conv = []
        if i % 3 == 0:
            conv.append({"role": "system", "content": "You are " + text(3) + "."})
        for _ in range(1 + (i % 4 == 1)):
            conv.append({"role": "user", "content": text(rng.randint(2, 12)).capitalize() + "?"})
            conv.append({"role": "assistant", "content": text(rng.randint(2, 10))})
        conv.pop()
        out.append((conv, text(rng.randint(1, 25)).capitalize() + "."))
    return out


def _openrlhf_payload(tok, conv, response, label=""):
    prompt = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    return {"query": [prompt + response + tok.eos_token], "prompts": [prompt], "labels": [label]}


async def _post_all(url, payloads, concurrency=64, headers=None):
    """OpenRLHF's client pattern: a new ClientSession per request, one sample each, many concurrent."""
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=180)

    async def one(payload):
        async with sem:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url, json=payload, headers=headers) as response:
                    return response.status, await response.json()

    return await asyncio.gather(*(one(p) for p in payloads))


def _post(url, body, headers=None, raw=False):
    async def go():
        async with aiohttp.ClientSession() as session:
            kwargs = {"data": body} if raw else {"json": body}
            async with session.post(url, headers=headers, **kwargs) as response:
                return response.status, await response.json()
    return asyncio.run(go())


def _get(url, headers=None):
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=headers) as response:
                return response.status, await response.json()
    return asyncio.run(go())


@pytest.fixture(scope="module")
def armorm(tiny):
    """Deterministic: a sample's reward is bit for bit its reward alone, however the server batched it, so server
    answers are compared with ``==`` (README: Scoring determinism)."""
    return rmplugins.load_reward_model(tiny("armorm"), deterministic=True)


@pytest.fixture(scope="module")
def armorm_server(armorm, policy_tok):
    app = create_app(armorm, policy_tokenizer=policy_tok, api_key=KEY, max_request_samples=8, max_body_bytes=20000)
    with BackgroundServer(app) as server:
        yield server


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_concurrent_one_sample_requests_match_rm_score(armorm, armorm_server, policy_tok):
    convs = _conversations(240)
    payloads = [_openrlhf_payload(policy_tok, c, r) for c, r in convs]
    answers = asyncio.run(_post_all(armorm_server.url + "/get_reward", payloads, 96, AUTH))
    expected = armorm.score([c for c, _ in convs], [r for _, r in convs])
    keys = None
    for (status, body), want in zip(answers, expected):
        assert status == 200, body
        assert len(body["rewards"]) == len(body["scores"]) == 1
        assert body["rewards"][0] == want
        assert body["scores"] == body["rewards"]
        keys = keys or sorted(body["extra_logs"])
        assert sorted(body["extra_logs"]) == keys  # the same keys in every response
        assert body["extra_logs"]["template_recovered"] == [1.0]
    status, metrics = _get(armorm_server.url + "/metrics.json", AUTH)
    assert status == 200 and metrics["samples"] >= 240
    assert metrics["mean_batch_size"] > 1.5, metrics  # concurrent requests really were batched
    assert metrics["latency_ms"]["p50"] is not None


def test_multi_sample_request_and_templated_text_is_not_scored_raw(armorm, armorm_server, policy_tok):
    convs = _conversations(5, seed=3)
    bodies = [_openrlhf_payload(policy_tok, c, r) for c, r in convs]
    merged = {k: [b[k][0] for b in bodies] for k in ("query", "prompts", "labels")}
    status, body = _post(armorm_server.url + "/get_reward", merged, AUTH)
    assert status == 200, body
    want = armorm.score([c for c, _ in convs], [r for _, r in convs])
    assert body["rewards"] == want
    # what OpenRLHF's own server effectively does (policy text as one blob) gives a different number
    raw = armorm.score([merged["prompts"][0]], [merged["query"][0][len(merged["prompts"][0]):]])
    assert abs(raw[0] - want[0]) > 1e-3


@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_wrong_or_missing_key_is_401(armorm_server, policy_tok, headers):
    payload = _openrlhf_payload(policy_tok, *_conversations(1)[0])
    status, body = _post(armorm_server.url + "/get_reward", payload, headers)
    assert status == 401 and "Bearer" in body["error"]
    assert _get(armorm_server.url + "/metrics.json")[0] == 401
    assert _get(armorm_server.url + "/health")[0] == 200  # health needs no key


def test_bad_inputs_get_4xx_with_reason_and_server_survives(armorm, armorm_server, policy_tok):
    url = armorm_server.url + "/get_reward"
    conv, response = _conversations(1, seed=7)[0]
    good = _openrlhf_payload(policy_tok, conv, response)
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({"prompts": ["x"]}).encode(), 422, "'query' is missing"),
        (json.dumps({"query": []}).encode(), 422, "empty"),
        (json.dumps({"query": "x" * 5, "prompts": 3}).encode(), 422, "must be a list"),
        (json.dumps({"query": [1], "prompts": ["a"]}).encode(), 422, "must be strings"),
        (json.dumps({"query": ["a", "b"], "prompts": ["a"]}).encode(), 422, "has 1 entries"),
        (json.dumps({"query": ["ab"] * 9, "prompts": ["a"] * 9}).encode(), 413, "limit is 8"),
        (json.dumps({"query": ["a" * 30000], "prompts": ["a"]}).encode(), 413, "exceeds the limit"),
        (json.dumps({"query": ["hello"], "prompts": ["bye"]}).encode(), 422, "does not start with"),
    ]
    for body, want_status, reason in cases:
        status, answer = _post(url, body, {**AUTH, "Content-Type": "application/json"}, raw=True)
        assert status == want_status, (body[:60], answer)
        assert reason in answer["error"], answer
    # text not from the policy template falls back to the plain mode and says so in extra_logs
    status, answer = _post(url, {"query": ["Q: hi A: yo"], "prompts": ["Q: hi A:"], "labels": [""]}, AUTH)
    assert status == 200 and answer["extra_logs"]["template_recovered"] == [0.0]
    assert answer["rewards"] == armorm.score(["Q: hi A:"], [" yo"])
    assert _get(armorm_server.url + "/health") == (200, _get(armorm_server.url + "/health")[1])
    status, answer = _post(url, good, AUTH)
    assert status == 200 and answer["rewards"] == armorm.score([conv], [response])
    errors = _get(armorm_server.url + "/metrics.json", AUTH)[1]["errors"]
    assert errors.get("413", 0) >= 2 and errors.get("400", 0) >= 1


def test_plain_mode_without_policy_tokenizer(armorm):
    with BackgroundServer(create_app(armorm)) as server:
        prompt, query = "Tell me about Paris.", "Tell me about Paris. Paris is the capital of France."
        status, body = _post(server.url + "/get_reward", {"query": [query], "prompts": [prompt], "labels": [""]})
        assert status == 200
        assert body["rewards"] == armorm.score([prompt], [" Paris is the capital of France."])
        assert body["extra_logs"]["template_recovered"] == [0.0]
        assert server.host == "127.0.0.1"


def test_timeout_is_504_and_server_recovers(armorm, policy_tok):
    app = create_app(armorm, policy_tokenizer=policy_tok, request_timeout=1e-4)
    with BackgroundServer(app) as server:
        payload = _openrlhf_payload(policy_tok, *_conversations(1)[0])
        status, body = _post(server.url + "/get_reward", payload)
        assert status == 504 and "timeout" in body["error"]
        assert _get(server.url + "/health")[0] == 200


def test_armorm_objective_logs(armorm, policy_tok):
    app = create_app(armorm, policy_tokenizer=policy_tok, objective_logs=True)
    with BackgroundServer(app) as server:
        conv, response = _conversations(1, seed=5)[0]
        status, body = _post(server.url + "/get_reward", _openrlhf_payload(policy_tok, conv, response))
        assert status == 200
        details = armorm.score_details([conv], [response])
        names = list(details.objective_names)
        assert len([k for k in body["extra_logs"] if k.startswith("objective/")]) == len(names)
        assert body["extra_logs"][f"objective/{names[0]}"][0] == float(details.rewards[0, 0])
        assert body["rewards"][0] == float(details.score[0])


@pytest.mark.parametrize("kind", ["pair_pm", "gpm"])
def test_pairwise_kinds_score_against_the_label_reference(tiny, policy_tok, kind):
    rm = rmplugins.load_reward_model(tiny(kind), deterministic=True)
    convs = _conversations(12, seed=11)
    refs = ["A reference answer about " + r.lower() for _, r in convs]
    payloads = [_openrlhf_payload(policy_tok, c, r, label=ref if i % 2 else json.dumps({"reference": ref}))
                for i, ((c, r), ref) in enumerate(zip(convs, refs))]
    with BackgroundServer(create_app(rm, policy_tokenizer=policy_tok)) as server:
        answers = asyncio.run(_post_all(server.url + "/get_reward", payloads, 12))
        want = rm.compare([c for c, _ in convs], [r for _, r in convs], refs)
        for (status, body), w in zip(answers, want):
            assert status == 200, body
            assert body["rewards"][0] == w and 0 < w < 1
        status, body = _post(server.url + "/get_reward", _openrlhf_payload(policy_tok, *convs[0]))  # label ""
        assert status == 422 and "reference" in body["error"] and kind in body["error"]
        health = _get(server.url + "/health")
        assert health[0] == 200 and health[1]["needs_reference"] is True


def test_model_failures_are_isolated_per_request(armorm, policy_tok):
    """A sample the model cannot score gets a 4xx with the reason, a NaN reward a 5xx; the other requests of the
    same batch are scored in that batch (the model reports failing rows; nothing is re-scored)."""

    class Flaky:
        kind, pointwise, name_or_path, deterministic = "bt", True, "flaky", False
        backend, max_length = armorm.backend, armorm.max_length

        def score_rows(self, prompts, completions):
            rows = armorm.score_rows(prompts, completions)
            for i, c in enumerate(completions):
                if "BOOM" in c:
                    rows.scores[i], rows.reasons[i] = None, "cannot score BOOM"
                elif c == "NAN":
                    rows.scores[i] = float("nan")
            return rows

    convs = _conversations(6, seed=4)
    payloads = [_openrlhf_payload(policy_tok, c, r) for c, r in convs]
    payloads[2] = _openrlhf_payload(policy_tok, convs[2][0], "BOOM")
    payloads[4] = _openrlhf_payload(policy_tok, convs[4][0], "NAN")
    with BackgroundServer(create_app(Flaky(), policy_tokenizer=policy_tok, max_wait_ms=50,
                                     prompt_cache_tokens=0)) as server:
        answers = asyncio.run(_post_all(server.url + "/get_reward", payloads, 6))
        want = armorm.score([c for c, _ in convs], [r for _, r in convs])
        for i, (status, body) in enumerate(answers):
            if i == 2:
                assert status == 422 and "cannot score BOOM" in body["error"]
            elif i == 4:
                assert status == 500 and "ValueError" in body["error"]
            else:
                assert status == 200 and body["rewards"][0] == want[i]
        assert _get(server.url + "/health")[0] == 200


def test_reference_from_label():
    assert reference_from_label("plain text") == "plain text"
    assert reference_from_label('{"reference": "r"}') == "r"
    assert reference_from_label({"chosen": [{"role": "assistant", "content": "c"}]}) == "c"
    assert reference_from_label("") is None and reference_from_label(None) is None
    assert reference_from_label(3) is None


def _load_by_path(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openrlhf_reward_func_file_against_live_server(armorm, armorm_server, policy_tok, monkeypatch):
    monkeypatch.setenv("RMPLUGINS_REWARD_URL", armorm_server.url)
    monkeypatch.setenv("RMPLUGINS_API_KEY", KEY)
    module = _load_by_path(ROOT / "integrations/openrlhf/reward_func.py", "reward_func")
    convs = _conversations(16, seed=21)
    results = [None] * len(convs)

    def worker(i):  # OpenRLHF calls it from many threads, one sample each
        p = _openrlhf_payload(policy_tok, *convs[i])
        results[i] = module.reward_func(p["query"], p["prompts"], p["labels"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(convs))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    want = armorm.score([c for c, _ in convs], [r for _, r in convs])
    for out, w in zip(results, want):
        assert out["rewards"].shape == (1,) and float(out["rewards"][0]) == w
        assert set(out["extra_logs"]) == {"rm_score", "template_recovered"}
    monkeypatch.setenv("RMPLUGINS_API_KEY", "wrong")
    with pytest.raises(RuntimeError, match="401"):
        module.reward_func(["x"], ["x"], [""])
    monkeypatch.setenv("RMPLUGINS_REWARD_URL", "http://127.0.0.1:9/get_reward")
    monkeypatch.setenv("RMPLUGINS_REWARD_RETRIES", "2")
    monkeypatch.setattr(module.time, "sleep", lambda s: None)  # the time module itself: undone after the test
    with pytest.raises(RuntimeError, match="unreachable after 2 attempts"):
        module.reward_func(["x"], ["x"], [""])


def test_verl_compute_score_against_live_server(armorm, armorm_server, monkeypatch):
    monkeypatch.setenv("RMPLUGINS_SCORE_URL", armorm_server.url + "/score")
    monkeypatch.setenv("RMPLUGINS_API_KEY", KEY)
    module = _load_by_path(ROOT / "integrations/verl/reward_server.py", "verl_reward")
    convs = _conversations(4, seed=9)
    want = armorm.score([c for c, _ in convs], [r for _, r in convs])
    one = module.compute_score("ds", convs[0][1], "", {"prompt": convs[0][0]})
    assert one["score"] == want[0]
    many = module.compute_score(data_sources=["ds"] * 4, solution_strs=[r for _, r in convs],
                                ground_truths=[""] * 4, extra_infos=[{"prompt": c} for c, _ in convs])
    assert [m["score"] for m in many] == want
    with pytest.raises(ValueError, match="prompt is missing"):
        module.compute_score("ds", "x", "", {})


INTEGRATIONS = {  # file, URL variable, its route, another framework's route of the same server
    "openrlhf": ("integrations/openrlhf/reward_func.py", "RMPLUGINS_REWARD_URL", "/get_reward", "/score"),
    "verl": ("integrations/verl/reward_server.py", "RMPLUGINS_SCORE_URL", "/score", "/get_reward"),
    "areal": ("integrations/areal/reward.py", "REWARD_MODEL_SERVICE_URL", "/classify", "/score"),
}


@pytest.mark.parametrize("framework", sorted(INTEGRATIONS))
def test_integrations_refuse_malformed_settings_when_loaded_and_when_called(framework, armorm, armorm_server,
                                                                           policy_tok, monkeypatch):
    """The framework files' environment settings: a malformed one stops the run when the framework loads the file
    (and on a call, if it changes after), naming the variable and what it takes, with no request sent and no retry
    waited out; a bare http://host:port gets the file's route appended and scores."""
    path, url_var, route, other = INTEGRATIONS[framework]
    malformed = [("RMPLUGINS_REWARD_TIMEOUT", value, "must be a positive number of seconds")
                 for value in ("30s", "0", "-1", "nan", "inf")]
    if framework != "areal":  # AReaL retries by itself
        malformed += [("RMPLUGINS_REWARD_RETRIES", value, "must be a whole number of attempts")
                      for value in ("0", "-2", "2.5", "many")]
    malformed += [(url_var, value, "is not an http\\(s\\) URL") for value in ("localhost:5000", "127.0.0.1:5000/x",
                                                                              "http://127.0.0.1:port", "ftp://h/")]
    malformed += [(url_var, f"http://127.0.0.1:5000{other}", f"names the server's {other} route.*"
                   f"http://127.0.0.1:5000{route}")]
    if framework == "openrlhf":
        malformed += [(url_var, " , ", "is empty")]
    for variable, value, message in malformed:
        monkeypatch.setenv(variable, value)
        with pytest.raises(ValueError, match=f"{variable}.*{message}"):
            _load_by_path(ROOT / path, f"{framework}_settings")
        monkeypatch.delenv(variable)
    module = _load_by_path(ROOT / path, f"{framework}_settings")
    module.time = type("NoWaiting", (), {"sleep": staticmethod(lambda s: pytest.fail("a retry was waited"))})
    calls = {"openrlhf": lambda: module.reward_func(["x"], ["x"], [""]),
             "verl": lambda: module.compute_score("ds", "x", "", {"prompt": "x"}),
             "areal": lambda: module.rmplugins_reward("x", "y")}
    monkeypatch.setenv("RMPLUGINS_REWARD_TIMEOUT", "soon")  # set after the file was loaded: refused at the call
    with pytest.raises(ValueError, match="RMPLUGINS_REWARD_TIMEOUT='soon'"):
        calls[framework]()
    monkeypatch.delenv("RMPLUGINS_REWARD_TIMEOUT")
    monkeypatch.setenv(url_var, armorm_server.url)  # bare: the route is appended
    monkeypatch.setenv("RMPLUGINS_API_KEY", KEY)
    conv, response = _conversations(1, seed=4)[0]
    want = armorm.score([conv], [response])[0]
    if framework == "verl":
        assert module.compute_score("ds", response, "", {"prompt": conv})["score"] == want
    elif framework == "areal":
        prompt = policy_tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert module.rmplugins_reward(prompt, response) == pytest.approx(want, abs=1e-6)
    else:
        payload = _openrlhf_payload(policy_tok, conv, response)
        assert float(module.reward_func(payload["query"], payload["prompts"], [""])["rewards"][0]) == \
            pytest.approx(want, abs=1e-6)


def test_cli_registers_serve():
    from rmplugins.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m", "--max-batch-size", "1"])
    assert args.host == "127.0.0.1" and args.port == 5000 and args.max_batch_size == 1
    assert args.func.__name__ == "_serve"


def test_rmplugins_serve_command_end_to_end(tiny, policy_tok):
    """The real CLI in a subprocess: key from the environment, policy tokenizer by path, 127.0.0.1."""
    import os

    from served import rmplugins_serve

    env = {**os.environ, "RMPLUGINS_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    with rmplugins_serve(["--model", tiny("bt_llama3"), "--policy-tokenizer", tiny("policy"), "--deterministic"],
                         env=env) as (_, url, _):
        conv, response = _conversations(1, seed=2)[0]
        payload = _openrlhf_payload(policy_tok, conv, response)
        assert _post(url + "/get_reward", payload)[0] == 401
        status, body = _post(url + "/get_reward", payload, AUTH)
        want = rmplugins.load_reward_model(tiny("bt_llama3"), deterministic=True).score([conv], [response])
        assert status == 200 and body["rewards"] == want


def test_templated_text_without_policy_tokenizer_is_recovered_or_refused_never_scored_raw(armorm, policy_tok):
    """The issue's case: ArmoRM served without --policy-tokenizer, sent Llama-3-templated OpenRLHF requests."""
    from rmplugins.policy_template import builtin_templates

    convs = _conversations(6, seed=13)
    with BackgroundServer(create_app(armorm)) as server:
        url = server.url + "/get_reward"
        answers = asyncio.run(_post_all(url, [_openrlhf_payload(policy_tok, c, r) for c, r in convs], 6))
        want = armorm.score([c for c, _ in convs], [r for _, r in convs])
        assert [body["rewards"][0] for _, body in answers] == want  # as rm.score on the recovered conversation
        assert all(body["extra_logs"]["template_recovered"] == [1.0] for _, body in answers)
        # ChatML (Qwen) text, rendered by a template other than the policy's, with the decode's trailing tokens
        chatml = builtin_templates()["chatml"].tokenizer
        conv, response = convs[1]
        prompt = chatml.apply_chat_template(conv, add_generation_prompt=True)
        status, body = _post(url, {"query": [prompt + response + "<|im_end|><|endoftext|>"], "prompts": [prompt]})
        assert status == 200 and body["rewards"] == armorm.score([conv], [response])
        # templated text that no template reproduces: refused with what to do, not scored as plain text
        odd = "<|im_start|>user: hi<|im_end|>\n"
        status, body = _post(url, {"query": [odd + "yo"], "prompts": [odd], "labels": [""]})
        assert status == 422 and "--policy-tokenizer" in body["error"] and "<|im_start|>" in body["error"]
        # plain text stays the documented plain mode
        status, body = _post(url, {"query": ["What is 2+2? Four."], "prompts": ["What is 2+2?"]})
        assert status == 200 and body["extra_logs"]["template_recovered"] == [0.0]
        assert body["rewards"] == armorm.score(["What is 2+2?"], [" Four."])
        metrics = _get(server.url + "/metrics.json")[1]
        assert metrics["template_builtin"] == {"llama-3": 6, "chatml": 1} and metrics["template_refused"] == 1
        assert metrics["template_fallbacks"] == 0
