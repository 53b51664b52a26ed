"""Group-relative rewards over one-sample requests (``rmplugins serve --group-size N``, issue 27).

Every reward is compared with the in-process group score, ``rm.rank(prompt, group).scores``, within the determinism
contract's tolerance; the samples arrive shuffled, concurrently, each on its own connection (OpenRLHF 0.11.2's own
client opens a session per try), and the edge cases each have their rule (``rmplugins/serving/groups.py``): a group
that never completes, retried samples (with and without ids), more than N samples, the same text twice, group ids,
a killed client.
"""

import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from reference_helpers import close
from served import rmplugins_serve
from test_openrlhf_client import openrlhf_agent
from test_server import _conversations, _get, _openrlhf_payload, _post

import rmplugins
from rmplugins.serving import BackgroundServer, create_app
from rmplugins.trl import AsyncRemoteRewardFunction


@pytest.fixture(scope="module")
def group_models(tiny):
    cache = {}

    def get(kind):
        if kind not in cache:
            if kind == "genrm":  # a pairwise judge, verdict read from its logits
                cache[kind] = rmplugins.load_reward_model(tiny("genrm_trained"), kind="genrm",
                                                          judge="mt-bench-logits", device="cpu")
            else:
                cache[kind] = rmplugins.load_reward_model(tiny(kind), device="cpu")
        return cache[kind]

    return get


def _groups(k, n, seed):
    """``k`` prompts with ``n`` different responses each."""
    convs = _conversations(k * n, seed=seed)
    return [(convs[g * n][0], [r for _, r in convs[g * n:(g + 1) * n]]) for g in range(k)]


def _metrics_text(url):
    async def go():
        async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
            return r.status, r.headers["content-type"], await r.text()

    return asyncio.run(go())


def _prometheus(url) -> dict:
    status, content_type, text = _metrics_text(url)
    assert status == 200 and content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("kind", ["gpm", "pair_pm", "pairrm", "genrm"])
def test_openrlhf_client_gets_each_samples_group_reward(group_models, policy_tok, kind):
    """OpenRLHF's ``_fetch_rewards_via_http``, one sample per call, 3 prompts x 4 samples shuffled and concurrent:
    each reward is the sample's in-process group score (GPM: GPO; pairwise: round robin)."""
    rm = group_models(kind)
    agent = openrlhf_agent()
    groups = _groups(3, 4, seed={"gpm": 1, "pair_pm": 2, "pairrm": 3, "genrm": 4}[kind])
    calls = [(g, j) for g in range(3) for j in range(4)]
    random.Random(kind).shuffle(calls)
    app = create_app(rm, policy_tokenizer=policy_tok, group_size=4, group_timeout=60)
    with BackgroundServer(app) as server:
        executor = agent.SingleTurnAgentExecutor(remote_rm_url=server.url + "/get_reward")

        async def rollouts():
            async def one(g, j):
                p = _openrlhf_payload(policy_tok, groups[g][0], groups[g][1][j])
                return await executor._fetch_rewards_via_http(p["query"], p["prompts"], p["labels"])
            return await asyncio.gather(*(one(g, j) for g, j in calls))

        answers = asyncio.run(rollouts())
        metrics = _get(server.url + "/metrics.json")[1]
        prom = _prometheus(server.url)
    method = "round_robin" if kind != "gpm" else None  # the server's default for pairwise kinds
    want = {g: rm.rank(conv, responses, method).scores for g, (conv, responses) in enumerate(groups)}
    for (g, j), (answer,) in zip(calls, answers):
        assert close(answer["rewards"][0], want[g][j]), (g, j, answer, want[g])
        assert answer["extra_logs"]["group_complete"] == [1.0] and answer["extra_logs"]["group_size"] == [4.0]
        assert answer["extra_logs"]["template_recovered"] == [1.0]
    assert max(max(w) - min(w) for w in want.values()) > 0.05  # the rewards differ: a mix-up would show
    assert metrics["groups"] == {"waiting": 0, "completed": 3, "timed_out": 0, "partial": 0, "expired": 0,
                                 "retries": 0, "spills": 0}
    assert prom[("rmplugins_groups_completed_total", ())] == 3
    assert prom[("rmplugins_groups_waiting", ())] == 0
    assert prom[("rmplugins_requests_total", ())] == 12
    assert prom[("rmplugins_request_duration_seconds_count", ())] == 12
    assert prom[("rmplugins_group_wait_seconds_count", ())] == 3


def test_a_group_that_never_completes(group_models):
    """--group-timeout: three of four samples are ranked as a group of three and say so; a lone sample is 408."""
    rm = group_models("gpm")
    (conv, responses), (lone_conv, lone) = _groups(2, 4, seed=5)
    app = create_app(rm, group_size=4, group_timeout=2.0)
    with BackgroundServer(app) as server:
        url = server.url + "/score"

        async def send():
            async with aiohttp.ClientSession() as s:
                async def one(c, r):
                    async with s.post(url, json={"prompts": [c], "completions": [r]}) as resp:
                        return resp.status, await resp.json()
                return await asyncio.gather(*(one(conv, r) for r in responses[:3]), one(lone_conv, lone[0]))

        started = time.monotonic()
        answers = asyncio.run(send())
        waited = time.monotonic() - started
        metrics = _get(server.url + "/metrics.json")[1]["groups"]
        prom = _prometheus(server.url)
    want = rm.rank(conv, responses[:3]).scores
    for (status, body), w in zip(answers[:3], want):
        assert status == 200 and close(body["rewards"][0], w)
        assert body["extra_logs"]["group_complete"] == [0.0] and body["extra_logs"]["group_size"] == [3.0]
    status, body = answers[3]
    assert status == 408 and "only 1 of the 4 samples" in body["error"] and "--group-timeout" in body["error"]
    assert body["kind"] == "group_incomplete"
    assert 1.5 < waited < 60
    assert metrics == {"waiting": 0, "completed": 0, "timed_out": 2, "partial": 1, "expired": 1, "retries": 0,
                       "spills": 0}
    assert prom[("rmplugins_groups_timed_out_total", (("outcome", "ranked_partial"),))] == 1
    assert prom[("rmplugins_groups_timed_out_total", (("outcome", "expired_408"),))] == 1


def test_partial_answers_leave_a_rejected_or_lone_sample_null_with_its_reason(tiny, group_models):
    """rmplugins' own client asks for ``partial`` answers: a group whose judge gave no verdict, and a lone sample
    whose group never came, are null with the reason (the 422 / 408 a one-sample client gets), the request's other
    samples answered; a server with ``--fallback-reward`` answers them that reward instead."""
    mute = rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", device="cpu",
                                       judge=rmplugins.PRESETS["mt-bench"].with_options(max_new_tokens=4))
    (conv, responses), (lone_conv, lone) = _groups(2, 2, seed=7)
    body = {"prompts": [conv, conv, lone_conv], "completions": [*responses, lone[0]]}
    with BackgroundServer(create_app(mute, group_size=2, group_timeout=0.5)) as server:
        status, answer = _post(server.url + "/score", body)
        assert status == 422 and "no verdict" in answer["error"] and answer["kind"] == "no_verdict"
        status, answer = _post(server.url + "/score", {**body, "partial": True})
        refusals = _get(server.url + "/metrics.json")[1]["refusals"]
        prom = _prometheus(server.url)
        logged = {}  # rmplugins' TRL client: the same rows None, counted by kind in TRL's logs
        rf = AsyncRemoteRewardFunction(server.url)
        out = asyncio.run(rf(prompts=["Name a color.", "Name a color.", "Count to three."],
                             completions=["Blue.", "Red, like a rose.", "One, two, three."],
                             log_metric=lambda key, value: logged.setdefault(key, value)))
    assert status == 200 and answer["rewards"] == [None, None, None]
    assert all("no verdict" in why for why in answer["errors"][:2]) and "only 1 of the 2" in answer["errors"][2]
    assert answer["error_kinds"] == ["no_verdict", "no_verdict", "group_incomplete"]
    assert out == [None, None, None] and logged[f"rewards/{rf.__name__}/none_frac"] == 1.0
    assert logged[f"rewards/{rf.__name__}/none_frac/no_verdict"] == pytest.approx(2 / 3)
    assert logged[f"rewards/{rf.__name__}/none_frac/group_incomplete"] == pytest.approx(1 / 3)
    # the first request's 422 (its first refusal) and the partial answer's three, by kind
    assert refusals == {"no_verdict": 3, "group_incomplete": 1}
    assert prom[("rmplugins_refusals_total", (("kind", "no_verdict"),))] == 3
    with BackgroundServer(create_app(mute, group_size=2, group_timeout=0.5, fallback_reward=-1.0)) as server:
        status, answer = _post(server.url + "/score", body)  # a client with no "no reward" value: the fallback
    assert status == 200 and answer["rewards"] == [-1.0, -1.0, -1.0] and "errors" not in answer
    assert answer["extra_logs"]["no_reward"] == [1.0, 1.0, 1.0]
    rm = group_models("gpm")
    with BackgroundServer(create_app(rm, group_size=2, group_timeout=0.5)) as server:
        status, answer = _post(server.url + "/score", {**body, "partial": True})
    assert status == 200 and answer["errors"][:2] == [None, None] and "only 1 of the 2" in answer["errors"][2]
    assert answer["error_kinds"] == [None, None, "group_incomplete"]
    assert all(close(got, want) for got, want in zip(answer["rewards"][:2], rm.rank(conv, responses).scores))


def test_retried_samples_are_not_counted_twice(group_models):
    """A sample sent again with its sample id while it waits attaches to the first arrival, and after the answer
    gets the same reward at once; without ids, a sample whose client gave up is taken over by its retry."""
    rm = group_models("gpm")
    (conv, responses), (conv2, responses2) = _groups(2, 3, seed=6)
    app = create_app(rm, group_size=3, group_timeout=60)
    with BackgroundServer(app) as server:
        url = server.url + "/score"

        async def post(s, c, r, sid=None, timeout=None):
            body = {"prompts": [c], "completions": [r]} | ({"sample_ids": [sid]} if sid else {})
            async with s.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status, await resp.json()

        async def with_ids():
            async with aiohttp.ClientSession() as s:
                first = asyncio.ensure_future(post(s, conv, responses[0], "a"))
                await asyncio.sleep(0.3)
                retry = asyncio.ensure_future(post(s, conv, responses[0], "a"))
                await asyncio.sleep(0.3)
                rest = await asyncio.gather(post(s, conv, responses[1], "b"), post(s, conv, responses[2], "c"))
                answers = [await first, await retry, *rest]
                late = await post(s, conv, responses[0], "a")  # the answer was lost: asked again
                return answers, late

        answers, late = asyncio.run(with_ids())
        want = rm.rank(conv, responses).scores
        assert [a[0] for a in answers] == [200] * 4
        got = [a[1]["rewards"][0] for a in answers]
        assert got[0] == got[1] and all(close(g, w) for g, w in zip(got, [want[0], want[0], want[1], want[2]]))
        assert answers[0][1]["extra_logs"]["group_size"] == [3.0]
        assert late == answers[0]
        assert _get(server.url + "/metrics.json")[1]["groups"] == {
            "waiting": 0, "completed": 1, "timed_out": 0, "partial": 0, "expired": 0, "retries": 2, "spills": 0}

        async def without_ids():
            async with aiohttp.ClientSession() as s:
                with pytest.raises(asyncio.TimeoutError):  # the client gives up and closes the connection
                    await post(s, conv2, responses2[0], timeout=0.5)
                deadline = time.monotonic() + 30
                while True:  # until the server saw the client go
                    async with s.get(server.url + "/metrics.json") as resp:
                        if (await resp.json())["client_disconnects"] >= 1:
                            break
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                return await asyncio.gather(post(s, conv2, responses2[0]), post(s, conv2, responses2[1]),
                                            post(s, conv2, responses2[2]))

        answers = asyncio.run(without_ids())
        want = rm.rank(conv2, responses2).scores
        assert all(a[0] == 200 and close(a[1]["rewards"][0], w) for a, w in zip(answers, want))
        groups = _get(server.url + "/metrics.json")[1]["groups"]
        assert groups["completed"] == 2 and groups["waiting"] == 0 and groups["retries"] == 3


def test_more_than_n_samples_and_the_same_text_twice(group_models):
    """A key that gets 2N samples forms two groups of N, in arrival order; the same response twice in a group
    counts twice and both get one reward (the in-process rank of the group with the duplicate)."""
    rm = group_models("pair_pm")
    (conv, responses), = _groups(1, 4, seed=7)
    app = create_app(rm, group_size=2, group_timeout=60)
    with BackgroundServer(app) as server:
        url = server.url + "/score"
        waves = [asyncio.run(_post_all(url, [{"prompts": [conv], "completions": [r]} for r in pair]))
                 for pair in (responses[:2], responses[2:])]
        for wave, pair in zip(waves, (responses[:2], responses[2:])):
            want = rm.rank(conv, pair, "round_robin").scores
            assert all(s == 200 and close(b["rewards"][0], w) for (s, b), w in zip(wave, want))
        groups = _get(server.url + "/metrics.json")[1]["groups"]
        assert groups["completed"] == 2 and groups["spills"] == 1  # the second group came right after the first
    with BackgroundServer(create_app(rm, group_size=4, group_timeout=60)) as server:
        group = [responses[0], responses[1], responses[0], responses[2]]
        answers = asyncio.run(_post_all(server.url + "/score",
                                        [{"prompts": [conv], "completions": [r]} for r in group]))
        got = [b["rewards"][0] for _, b in answers]
        want = rm.rank(conv, group, "round_robin").scores
        assert got[0] == got[2] and all(close(g, w) for g, w in zip(got, want))
        assert answers[0][1]["extra_logs"]["group_size"] == [4.0]


async def _post_all(url, bodies):
    async with aiohttp.ClientSession() as s:
        async def one(body):
            async with s.post(url, json=body) as resp:
                return resp.status, await resp.json()
        return await asyncio.gather(*(one(b) for b in bodies))


def test_group_ids_key_groups_and_one_id_is_one_prompt(group_models):
    """Two groups of the same prompt under different ids (verl's uid) are ranked apart, interleaved; an id sent
    with another prompt is refused."""
    rm = group_models("gpm")
    (conv, responses), (other, _) = _groups(2, 4, seed=8)
    app = create_app(rm, group_size=2, group_timeout=60)
    with BackgroundServer(app) as server:
        bodies = [{"prompts": [conv], "completions": [r], "group_ids": [g]}
                  for r, g in zip(responses, ["g1", "g2", "g2", "g1"])]
        answers = asyncio.run(_post_all(server.url + "/score", bodies))
        want1 = rm.rank(conv, [responses[0], responses[3]]).scores
        want2 = rm.rank(conv, [responses[1], responses[2]]).scores
        got = [b["rewards"][0] for _, b in answers]
        assert all(close(g, w) for g, w in zip(got, [want1[0], want2[0], want2[1], want1[1]]))

        async def clash():
            async with aiohttp.ClientSession() as s:
                first = asyncio.ensure_future(s.post(server.url + "/score", json={
                    "prompts": [conv], "completions": ["x"], "group_ids": ["g3"]}, timeout=aiohttp.ClientTimeout(5)))
                await asyncio.sleep(0.3)
                async with s.post(server.url + "/score", json={"prompts": [other], "completions": ["y"],
                                                               "group_ids": ["g3"]}) as resp:
                    answer = resp.status, await resp.json()
                first.cancel()
                return answer

        status, body = asyncio.run(clash())
        assert status == 422 and "another prompt" in body["error"]
        status, body = _post(server.url + "/score", {"prompts": [conv], "completions": ["z"], "group_ids": [True]})
        assert status == 422 and "group_ids must be a string or an integer" in body["error"]


def test_a_killed_client_leaves_its_sample_in_the_group(group_models, tmp_path):
    """kill -9 of a client whose sample waits: the group still completes with that sample (it was generated), the
    others get their rewards at once, and the sample's retry gets the reward its client never received."""
    rm = group_models("gpm")
    (conv, responses), = _groups(1, 3, seed=9)
    app = create_app(rm, group_size=3, group_timeout=60)
    with BackgroundServer(app) as server:
        url = server.url + "/score"
        script = ("import json, sys, urllib.request\n"
                  "body = json.dumps({'prompts': [json.loads(sys.argv[2])], 'completions': [sys.argv[3]]}).encode()\n"
                  "urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=body, "
                  "headers={'Content-Type': 'application/json'}), timeout=300)\n")
        import json

        client = subprocess.Popen([sys.executable, "-c", script, url, json.dumps(conv), responses[0]])
        deadline = time.monotonic() + 60
        while _get(server.url + "/metrics.json")[1]["samples"] < 1:
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.05)
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
        while _get(server.url + "/metrics.json")[1]["client_disconnects"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answers = asyncio.run(_post_all(url, [{"prompts": [conv], "completions": [r]} for r in responses[1:]]))
        want = rm.rank(conv, responses).scores
        assert all(s == 200 and close(b["rewards"][0], w) for (s, b), w in zip(answers, want[1:]))
        status, retry = _post(url, {"prompts": [conv], "completions": [responses[0]]})
        assert status == 200 and close(retry["rewards"][0], want[0])
        assert _get(server.url + "/metrics.json")[1]["groups"]["retries"] == 1
        assert _get(server.url + "/health")[0] == 200


def test_pointwise_families_ignore_the_option_and_bad_options_are_refused(group_models, tiny, policy_tok):
    armorm = rmplugins.load_reward_model(tiny("armorm"), device="cpu", deterministic=True)
    conv, response = _conversations(1, seed=10)[0]
    with BackgroundServer(create_app(armorm, group_size=4)) as server:
        status, body = _post(server.url + "/score", {"prompts": [conv], "completions": [response]})
        assert status == 200 and body["rewards"] == armorm.score([conv], [response])
        assert _get(server.url + "/health")[1]["group_size"] is None
    gpm = group_models("gpm")
    with pytest.raises(ValueError, match="--group-method round_robin: kind 'gpm' ranks a group with one of"):
        create_app(gpm, group_size=4, group_method="round_robin")
    with pytest.raises(ValueError, match="at least 2"):
        create_app(gpm, group_size=1)
    with pytest.raises(ValueError, match="--group-method applies with --group-size"):
        create_app(gpm, group_method="gpo")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "rmplugins", "serve", "--model", tiny("pair_pm"), "--kind",
                          "pair_pm", "--group-size", "4", "--group-method", "gpo", "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--group-method gpo: kind 'pair_pm' ranks a group with one of" in run.stderr
    assert time.monotonic() - started < 60  # refused from the checkpoint's headers, before the model loads
    run = subprocess.run([sys.executable, "-m", "rmplugins", "serve", "--model", tiny("gpm"), "--group-size", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "a group needs at least 2 samples" in run.stderr


def test_prometheus_metrics_and_json(tiny, policy_tok):
    """``/metrics`` in Prometheus' text format (requests, samples, batch sizes, latency histograms, tokens vs the
    floor, prompt cache); ``/metrics.json`` the same numbers; both behind the API key."""
    rm = rmplugins.load_reward_model(tiny("armorm"), device="cpu")
    convs = _conversations(6, seed=11)
    with BackgroundServer(create_app(rm, policy_tokenizer=policy_tok, api_key="k")) as server:
        assert _metrics_text(server.url)[0] == 401
        auth = {"Authorization": "Bearer k"}
        for conv, response in convs:
            assert _post(server.url + "/get_reward", _openrlhf_payload(policy_tok, conv, response), auth)[0] == 200

        async def scrape():
            async with aiohttp.ClientSession(headers=auth) as s, s.get(server.url + "/metrics") as r:
                return await r.text()

        text = asyncio.run(scrape())
        data = _get(server.url + "/metrics.json", auth)[1]
    prom = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
    assert prom[("rmplugins_requests_total", ())] == 6 == data["requests"]
    assert prom[("rmplugins_samples_total", ())] == 6 == data["samples"]
    assert prom[("rmplugins_batch_size_samples_sum", ())] == 6
    assert prom[("rmplugins_batches_total", ())] == data["batches"] >= 1
    assert prom[("rmplugins_request_duration_seconds_count", ())] == 6
    assert prom[("rmplugins_tokens_processed_total", ())] == data["engine"]["tokens_processed"] > 0
    assert prom[("rmplugins_tokens_floor_total", ())] == data["engine"]["tokens_floor"] > 0
    assert ("rmplugins_prompt_cache_tokens", ()) in prom
    assert ("rmplugins_groups_waiting", ()) not in prom  # no --group-size


def test_samples_waiting_for_groups_are_bounded(group_models):
    """Groups that never fill (a client sending fewer samples per prompt than --group-size) cannot pile up: past
    --max-queue-samples waiting samples, new ones get 503 with the likely cause."""
    rm = group_models("gpm")
    groups = _groups(3, 1, seed=12)
    with BackgroundServer(create_app(rm, group_size=4, group_timeout=3, max_queue_samples=2)) as server:
        answers = asyncio.run(_post_all(server.url + "/score",
                                        [{"prompts": [c], "completions": [r[0]]} for c, r in groups]))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [408, 408, 503]
    refused = next(body for status, body in answers if status == 503)
    assert "waiting for their groups" in refused["error"] and "--group-size (4)" in refused["error"]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_server_answers_the_samples_waiting_for_groups_at_once(tiny, stop):
    """Ctrl-C (or SIGTERM) while samples wait for incomplete groups: no more samples can arrive, so they are answered
    503 at once and the server exits; it waited out --group-timeout (120 s here) with nothing said before."""
    import concurrent.futures
    import json

    (conv, responses), = _groups(1, 4, seed=12)
    with rmplugins_serve(["--model", tiny("gpm"), "--group-size", "4", "--group-timeout", "120"]) as (server, url,
                                                                                                       lines):
        deadline = time.monotonic() + 120
        pool = concurrent.futures.ThreadPoolExecutor(2)
        waiting = [pool.submit(lambda r: asyncio.run(_post_all(url + "/score", [{"prompts": [conv],
                                                                                  "completions": [r]}]))[0], r)
                   for r in responses[:2]]
        while _get(url + "/metrics.json")[1]["samples"] < 2:  # counted as they join their group (no await between)
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        server.send_signal(stop)
        answers = [w.result(timeout=60) for w in waiting]
        # uvicorn stops gracefully, then exits as the signal asks (Ctrl-C: 130, as a shell reports it; SIGTERM)
        code = server.wait(timeout=60)
        took = time.monotonic() - started
        time.sleep(0.2)  # the last log lines
        assert code == {signal.SIGINT: 130, signal.SIGTERM: -signal.SIGTERM}[stop], "".join(lines)[-3000:]
    log = "".join(lines)
    assert answers == [(503, {"error": "the server is shutting down", "status": 503})] * 2, answers
    assert took < 60, took  # far below --group-timeout
    assert "stopping: 2 samples waiting for incomplete groups are answered 503" in log and "Traceback" not in log
    assert json.dumps(answers)  # the answers are plain JSON a client can read
