"""Fuzzing the reward server's two POST routes with hypothesis, over real localhost HTTP.

Property: whatever the body, the answer is 200 with one reward per sample, or a 4xx with a reason, never a 5xx,
and the server stays healthy. Bounded (a fixed number of examples, derandomized so CI runs the same ones)."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rmplugins
from rmplugins.serving import BackgroundServer, create_app

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

odd_text = st.sampled_from(["", "\ud800 lone surrogate", "<|im_start|>user\nhi<|im_end|>\n", "[INST] hi [/INST]",
                            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "é" * 50])
text = st.text(max_size=40) | odd_text
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)
content = text | text | json_values | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": json_values}),
                                        max_size=2)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "robot"])},
                                optional={"content": content, "tool_calls": json_values})
user_turn = st.fixed_dictionaries({"role": st.just("user"), "content": text})
# any messages, or any messages ending with a user turn (a valid prompt more often)
conversation = st.lists(message, max_size=3) | st.builds(lambda head, last: head + [last],
                                                        st.lists(message, max_size=2), user_turn)


def field(values):
    return st.lists(values, min_size=0, max_size=3) | json_values



@st.composite
def openrlhf_requests(draw):
    """Well-formed OpenRLHF bodies (query = prompt + response) with fuzzed texts and labels."""
    pairs = draw(st.lists(st.tuples(text, text), min_size=1, max_size=3))
    body = {"query": [p + r for p, r in pairs], "prompts": [p for p, _ in pairs]}
    if draw(st.booleans()):
        body["labels"] = draw(st.lists(text | json_values, min_size=len(pairs), max_size=len(pairs)))
    return body


@st.composite
def score_requests(draw):
    """Well-formed /score bodies: a prompt (text or messages) and a completion (text or messages) per row."""
    n = draw(st.integers(1, 3))
    prompts = draw(st.lists(text | conversation, min_size=n, max_size=n))
    completions = draw(st.lists(text | conversation, min_size=n, max_size=n))
    return {"prompts": prompts, "completions": completions}


get_reward_bodies = openrlhf_requests() | st.fixed_dictionaries(
    {}, optional={"query": field(text | json_values), "prompts": field(text | json_values),
                  "labels": field(text | json_values)}) | json_values
score_bodies = score_requests() | st.fixed_dictionaries(
    {}, optional={"prompts": field(text | conversation), "completions": field(text | conversation),
                  "references": field(text | st.none())}) | json_values


@pytest.fixture(scope="module")
def server(tiny):
    rm = rmplugins.load_reward_model(tiny("bt_llama3"))
    with BackgroundServer(create_app(rm, max_request_samples=4)) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client


def _check(client, path, body):
    raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (path, body, response.text[:300])
    answer = response.json()
    if response.status_code == 200:
        n = len(answer["rewards"])
        assert n >= 1 and len(answer["scores"]) == n and all(len(v) == n for v in answer["extra_logs"].values())
    else:
        assert 400 <= response.status_code < 500 and answer["error"], answer


@SETTINGS
@given(body=get_reward_bodies)
def test_get_reward_never_answers_5xx(server, body):
    _check(server, "/get_reward", body)


@SETTINGS
@given(body=score_bodies)
def test_score_never_answers_5xx(server, body):
    _check(server, "/score", body)


def test_server_still_healthy_after_the_fuzz(server):
    assert server.get("/health").status_code == 200
    errors = server.get("/metrics.json").json()["errors"]
    assert not any(code.startswith("5") for code in errors), errors
