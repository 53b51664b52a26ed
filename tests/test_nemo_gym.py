"""NeMo-RL's rewards through NeMo-Gym: ``integrations/nemo_gym/rmplugins_reward`` inside NeMo-Gym's own
resources-server app (NeMo-Gym 0.7.0, installed ``--no-deps --ignore-requires-python``: it declares Python 3.13,
and its server classes import and run unchanged here), in a process of its own (``nemo_gym_verify_script.py``),
against a real ``rmplugins serve`` on localhost. Verify bodies are what NeMo-Gym's simple agent posts: the dataset
row with NeMo-Gym's rollout coordinates, and the policy's Responses-API response."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from reference_helpers import close
from test_non_finite import POISONED, PROMPT, bt_with_nan_tokens
from test_server import _conversations

import rmplugins
from rmplugins.refusals import KINDS
from rmplugins.serving import BackgroundServer, create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import peer_pythonpath  # noqa: E402  (NeMo-Gym imports scipy and wandb, kept out of the environment)

pytestmark = pytest.mark.skipif(__import__("importlib.util").util.find_spec("nemo_gym") is None,
                                reason="NeMo-Gym is installed by `make setup`")
SERVER = Path(__file__).resolve().parents[1] / "integrations" / "nemo_gym" / "rmplugins_reward"
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nemo_gym_verify_script.py")
KEY = "nemo-gym-test-key"
REFERENCE = "A reference answer, plain and short."
BIG = 120  # one group larger than aiohttp's default cap of 100 connections


def _response(text_parts, reasoning=None, rid="resp"):
    """A Responses-API response as the policy model server returns it: an optional reasoning item, then the
    assistant message with its text parts."""
    output = []
    if reasoning:
        output.append({"type": "reasoning", "id": f"rs_{rid}", "summary": [{"type": "summary_text",
                                                                           "text": reasoning}]})
    output.append({"type": "message", "id": f"msg_{rid}", "role": "assistant", "status": "completed",
                   "content": [{"type": "refusal", "refusal": t[len("REFUSAL:"):]} if t.startswith("REFUSAL:")
                               else {"type": "output_text", "text": t, "annotations": []} for t in text_parts]})
    return {"id": rid, "created_at": 0.0, "model": "policy", "object": "response", "output": output,
            "parallel_tool_calls": False, "tool_choice": "auto", "tools": []}


def _body(conv, text_parts, reasoning=None, rid="resp", **coordinates):
    """The simple agent's verify body: its run request (the dataset row, NeMo-Gym's ``_ng_*`` coordinates) with
    the response. A leading system message is the request's ``instructions``."""
    params = {"input": [dict(m, type="message") for m in conv if m["role"] != "system"], "tools": [],
              "parallel_tool_calls": False}
    if conv[0]["role"] == "system":
        params["instructions"] = conv[0]["content"]
    return {"responses_create_params": params, "agent_ref": {"type": "responses_api_agents", "name": "agent"},
            **coordinates, "response": _response(text_parts, reasoning, rid)}


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """Every case through NeMo-Gym's app in one process: ArmoRM (pointwise, behind an API key) and GPM with
    ``--group-size 3``, each a real server; the references computed here, in process."""
    armorm = rmplugins.load_reward_model(tiny("armorm"), device="cpu", deterministic=True)
    gpm = rmplugins.load_reward_model(tiny("gpm"), device="cpu", deterministic=True)
    convs = _conversations(3, seed=71)  # a system message (-> instructions), single- and multi-turn
    pointwise = [_body(c, [r[:len(r) // 2], r[len(r) // 2:] if i < 2 else "REFUSAL:" + r[len(r) // 2:]],
                       reasoning="Let me think." if i else None, rid=f"p{i}", _ng_task_index=i, _ng_rollout_index=0)
                 for i, (c, r) in enumerate(convs)]  # the last one's second part written as a refusal part
    long = [{"role": "user", "content": "word " * 20000}]  # a prompt ArmoRM cannot read whole
    pointwise.append(_body(long, ["an answer"], rid="long", _ng_task_index=9, _ng_rollout_index=0,
                           instance_config={"seed": 4}))
    group_convs = _conversations(1, seed=72) * 2  # one prompt in two groups (two steps): the group id keys them
    rng = random.Random(3)
    responses = [[" ".join(rng.sample(c[1].split() * 3, 6)) for _ in range(3)] for c in group_convs]
    grouped = [_body(c, [responses[g][k]], rid=f"g{g}r{k}", _ng_group_id=f"step7-{g}", _ng_group_attempt=0,
                     _ng_rollout_index=k, _ng_task_index=g) for g, (c, _) in enumerate(group_convs) for k in range(3)]
    grouped.append(dict(grouped[1]))  # NeMo-Gym retrying rollout 1 of group 0: attaches, never counts twice
    rng.shuffle(grouped)
    other = FastAPI()  # some other service on the configured address, answering 200
    other.post("/score")(lambda: {"score": 1.0})
    html = FastAPI()  # and one answering 200 with a web page
    html.post("/score")(lambda: HTMLResponse("<html>hello</html>"))
    with BackgroundServer(create_app(armorm, api_key=KEY, max_sample_chars=10 ** 6, objective_logs=True)) as a, \
            BackgroundServer(create_app(gpm, group_size=3, group_timeout=60)) as g, BackgroundServer(other) as o, \
            BackgroundServer(create_app(gpm)) as p, BackgroundServer(html) as h, \
            BackgroundServer(create_app(gpm, group_size=BIG, group_timeout=60)) as big, \
            BackgroundServer(create_app(gpm, group_size=2, group_timeout=0.5)) as lone, \
            BackgroundServer(create_app(rmplugins.load_reward_model(bt_with_nan_tokens(
                tiny, tmp_path_factory.mktemp("nan") / "bt"), device="cpu"))) as broken:
        cases = [
            {"config": {"url": a.url, "api_key": KEY}, "requests": pointwise},
            {"config": {"url": g.url + "/score"}, "requests": grouped, "together": True},
            {"config": {"url": a.url, "api_key": "wrong"}, "requests": pointwise[:1]},
            {"config": {"url": "http://127.0.0.1:1", "retries": 1}, "requests": pointwise[:1]},  # nothing listens
            {"config": {"url": a.url + "/classify"}, "requests": []},
            {"config": {"url": "localhost:5000"}, "requests": []},
            {"config": {"url": a.url, "api_key": KEY},
             "requests": [_body(convs[0][0] + [{"role": "assistant", "content": "x"}], ["y"])]},
        ]
        shipped = yaml.safe_load((SERVER / "configs" / "rmplugins_reward.yaml").read_text())
        cases.append({"config": shipped["rmplugins_reward_resources_server"]["resources_servers"]["rmplugins_reward"],
                      "requests": []})
        rows = [json.loads(line) for line in (SERVER / "data" / "example.jsonl").read_text().splitlines()]
        cases.append({"config": {"url": a.url, "api_key": KEY},
                      "requests": [{**row, "response": _response(["A short answer."], rid=f"ex{i}")}
                                   for i, row in enumerate(rows)]})
        cases.append({"config": {"url": o.url}, "requests": pointwise[:1]})
        cases.append({"config": {"url": p.url}, "requests": [{**pointwise[0], "reference": REFERENCE}, pointwise[1]]})
        many = [_body(group_convs[0][0], [f"{responses[0][k % 3]} {k}"], rid=f"big{k}", _ng_group_id="big",
                      _ng_rollout_index=k) for k in range(BIG)]
        cases.append({"config": {"url": big.url}, "requests": many, "together": True})
        cases.append({"config": {"url": h.url, "retries": 2}, "requests": pointwise[:1]})
        cases.append({"config": {"url": lone.url}, "requests": [_body(group_convs[0][0], ["alone"], rid="lone",
                                                                      _ng_group_id="never", _ng_rollout_index=0)]})
        cases.append({"kinds": list(KINDS) + ["a kind of a later server"]})
        cases.append({"config": {"url": broken.url, "retries": 3},
                      "requests": [_body([{"role": "user", "content": PROMPT[0]["content"]}], [POISONED], rid="nan",
                                         _ng_task_index=0, _ng_rollout_index=0)]})
        path = tmp_path_factory.mktemp("nemo_gym") / "cases.json"
        path.write_text(json.dumps(cases))
        run = subprocess.run([sys.executable, SCRIPT, str(path)], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": peer_pythonpath()})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    want_pointwise = armorm.score([c for c, _ in convs], [r for _, r in convs])
    want_groups = [dict(zip(responses[g], gpm.rank(c, responses[g]).scores)) for g, (c, _) in enumerate(group_convs)]
    examples = [([{"role": "system", "content": r["responses_create_params"]["instructions"]}]
                 if "instructions" in r["responses_create_params"] else [])
                + [{"role": m["role"], "content": m["content"]} for m in r["responses_create_params"]["input"]]
                for r in rows]
    want_examples = armorm.score(examples, ["A short answer."] * len(examples))
    want_reference = gpm.compare([convs[0][0]], [convs[0][1]], [REFERENCE])[0]
    return {"results": results, "pointwise": want_pointwise, "examples": want_examples, "reference": want_reference,
            "groups": want_groups, "grouped": grouped, "armorm": armorm}


def test_nemo_gym_verify_gives_armorms_reward_and_masks_what_it_cannot_read(served):
    """Each rollout's reward is ArmoRM's score of the conversation (``instructions`` as the system message) and the
    assistant text (its parts joined, a refusal part's text too, the reasoning item left out); the server's logs
    come back as top-level fields (``--objective-logs``: its 19 objectives); the prompt ArmoRM cannot read whole is
    masked (NeMo-Gym's ``mask_sample``), the others are not."""
    answers = served["results"][0]
    assert [status for status, _ in answers] == [200] * 4
    for (_, body), want in zip(answers, served["pointwise"]):
        assert close(body["reward"], want) and body["mask_sample"] is False and body["failure_kind"] is None
        assert body["rm_score"] == body["reward"] and body["template_recovered"] == 1.0
        assert {f"objective/{n}" for n in served["armorm"].objective_names} <= set(body)
        assert body["_ng_rollout_index"] == 0 and body["response"]["id"].startswith("p")  # the row echoed
    _, masked = answers[3]
    assert masked["mask_sample"] is True and masked["reward"] == 0.0
    # NeMo-RL's GRPO reads the flag from instance_config (nemo_rl/experience/rollouts.py, 2026-08): the row's own
    # settings there are kept
    assert masked["instance_config"] == {"seed": 4, "mask_sample": True}
    assert all("instance_config" not in body for _, body in answers[:3])
    # the server's kind of refusal (too_long), namespaced as NeMo-Gym asks for a kind it has no shared name for
    assert masked["failure_kind"] == "rmplugins:too_long" and "too long" in masked["failure_reason"]


def test_nemo_gym_groups_get_gpms_group_rewards(served):
    """With ``rmplugins serve --group-size 3`` each rollout's reward is its GPO score within its NeMo-Gym group
    (``_ng_group_id``: here two groups of one prompt), requests arriving together and shuffled; a retried rollout
    gets the same reward and the group still holds three."""
    answers = served["results"][1]
    assert all(status == 200 for status, _ in answers), answers
    for body, (_, answer) in zip(served["grouped"], answers):
        g = int(body["_ng_group_id"].rsplit("-", 1)[1])
        text = body["response"]["output"][0]["content"][0]["text"]
        assert close(answer["reward"], served["groups"][g][text]), (answer["reward"], served["groups"][g][text])
        assert answer["group_complete"] == 1.0 and answer["group_size"] == 3.0 and not answer["mask_sample"]


def test_nemo_gym_wrong_settings_fail_loudly_and_an_unreachable_server_masks(served):
    """A wrong API key fails the rollout with the reward server's reason (never a reward); a reward server that
    cannot be reached masks the sample as NeMo-Gym masks an unavailable judge; a URL that is not http(s), or names
    another framework's route, is refused when NeMo-Gym builds the config; a conversation that ends with the
    assistant (no turn to answer) fails its rollout, as does an answer that is not rmplugins serve's."""
    results = served["results"]
    status, body = results[2][0]
    assert status == 502 and "401" in body["detail"]
    _, body = results[3][0]
    assert body["mask_sample"] is True and body["failure_kind"] == "transport_unreachable"
    assert body["instance_config"] == {"mask_sample": True}
    assert "unreachable after 1 attempts" in body["failure_reason"]
    assert results[4][0][0] == "config" and "speaks another framework's protocol" in results[4][0][1]
    assert results[5][0][0] == "config" and "is not an http(s) URL" in results[5][0][1]
    status, body = results[6][0]
    assert status == 422 and "must end with a user" in body["detail"]
    status, body = results[9][0]  # a 200 from something that is not rmplugins serve is no reward either
    assert status == 502 and "is not rmplugins serve's /score answer" in body["detail"]
    status, body = results[12][0]  # not even JSON: the same, not retried and masked as a lost connection
    assert status == 502 and "is not rmplugins serve's /score answer" in body["detail"] and "hello" in body["detail"]
    status, body = results[15][0]  # a reward model whose forward gives NaN: no reward, not masked as a lost server
    assert status == 502 and "model fault: NonFiniteOutput" in body["detail"], body


def test_refusals_get_nemo_gyms_failure_kinds_from_the_servers_kind(served):
    """The failure kind comes from the server's ``error_kinds``, never from its reason's words: a grouped rollout
    whose group never completed is NeMo-Gym's ``cohort_incomplete``; every kind of refusal rmplugins has maps to a
    name NeMo-Gym's own vocabulary accepts (shared, or namespaced ``rmplugins:...``), an unknown one to
    ``verifier_error``."""
    ((status, body),) = served["results"][13]
    assert status == 200 and body["mask_sample"] is True and body["reward"] == 0.0
    assert body["failure_kind"] == "cohort_incomplete" and "--group-timeout" in body["failure_reason"]
    mapped = {kind: (name, accepted) for kind, name, accepted in served["results"][14]}
    assert mapped["no_verdict"][0] == "judge_unparseable" and mapped["group_incomplete"][0] == "cohort_incomplete"
    assert mapped["too_long"][0] == "rmplugins:too_long" and mapped["unreadable"][0] == "rmplugins:unreadable"
    assert mapped["rejected"][0] == mapped["a kind of a later server"][0] == "verifier_error"
    assert all(accepted for _, accepted in mapped.values())


def test_the_shipped_config_and_example_data_run_as_nemo_gym_reads_them(served):
    """The directory's own config block validates as NeMo-Gym builds the server's config, and its example rows,
    each with a response, get ArmoRM's rewards (``instructions`` as the system message)."""
    assert served["results"][7] == []
    answers = served["results"][8]
    assert [status for status, _ in answers] == [200] * 3
    assert all(close(body["reward"], want) for (_, body), want in zip(answers, served["examples"]))


def test_a_pairwise_model_without_groups_compares_with_the_rows_reference(served):
    """GPM served without ``--group-size``: a row's ``reference`` response gives P(response beats reference); a row
    without one fails its rollout with the server's reason (never a masked sample: the setting is wrong)."""
    (status, body), (missing, refused) = served["results"][10]
    assert status == 200 and close(body["reward"], served["reference"]) and not body["mask_sample"]
    assert missing == 502 and "has no reward for a lone response" in refused["detail"]


def test_a_group_larger_than_a_connection_pool_completes(served):
    """A group of 120 rollouts in flight at once (NeMo-RL sends a step's rollouts together; each waits for its group
    on its connection): every one is answered from the complete group, none waits for --group-timeout."""
    answers = served["results"][11]
    assert [status for status, _ in answers] == [200] * BIG
    assert {(body["group_complete"], body["group_size"]) for _, body in answers} == {(1.0, float(BIG))}
