"""The reward server against careless and hostile clients, over real localhost sockets: slow and idle
connections, a connection flood, malformed bodies, auth edge cases, the CLI's argument and start-up errors."""

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_server import _get, _post

import rmplugins
from rmplugins.serving import BackgroundServer, Batcher, create_app
from rmplugins.serving.batcher import Pending

ROOT = Path(__file__).resolve().parents[1]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def bt(tiny):
    return rmplugins.load_reward_model(tiny("bt_llama3"), deterministic=True)


def _raw(port, data: bytes, wait: float = 5.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(wait)
        if data:
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except socket.timeout:
            out += b"<still open>"
        return out


def test_slow_and_idle_connections_are_closed_and_a_flood_is_capped(bt):
    with BackgroundServer(create_app(bt), read_timeout=1.0, max_connections=4) as server:
        started = time.monotonic()
        assert _raw(server.port, b"", wait=10) == b""  # idle: closed by the server after ~1 s
        assert _raw(server.port, b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Le", wait=10) == b""  # slow head
        body_cut = (b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 50\r\n\r\n{")
        assert b"<still open>" not in _raw(server.port, body_cut, wait=10)  # slow body
        assert time.monotonic() - started < 20
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        try:
            time.sleep(0.2)
            assert _raw(server.port, b"", wait=5) == b""  # the fifth connection is closed at once
        finally:
            for s in idle:
                s.close()
        time.sleep(0.3)
        assert _get(server.url + "/health")[0] == 200  # served again once the idle ones are gone


def test_malformed_bodies_are_4xx_never_500(bt):
    deep = ("[" * 3000 + "]" * 3000).encode()
    huge_number = b'{"query": [' + b"9" * 5000 + b'], "prompts": ["a"]}'
    cases = [
        ("/get_reward", deep, JSON, 400, "nested too deeply"),
        ("/get_reward", huge_number, JSON, 400, "cannot read"),
        ("/get_reward", b'{"query": ["hi"], "prompts": ["hi"]}', {"Content-Type": "text/plain"}, 415,
         "application/json"),
        ("/get_reward", b'{"query": ["\\ud800 yo"], "prompts": ["\\ud800"]}', JSON, 422, "not valid Unicode"),
        ("/score", json.dumps({"prompts": [[{"role": "user", "content": [{"type": "text", "text": 5}]}]],
                               "completions": ["x"]}).encode(), JSON, 422, "must be a string"),
        ("/score", json.dumps({"prompts": [[{"role": "user"}]], "completions": ["x"]}).encode(), JSON, 422,
         "has no 'content'"),
        ("/score", json.dumps({"prompts": ["hi"], "completions": ["\ud800"]}).encode("utf-8", "surrogatepass"),
         JSON, 422, "not valid Unicode"),
    ]
    with BackgroundServer(create_app(bt)) as server:
        for path, body, headers, status, reason in cases:
            got, answer = _post(server.url + path, body, headers, raw=True)
            assert got == status and reason in answer["error"], (path, body[:40], answer)
        errors = _get(server.url + "/metrics.json")[1]["errors"]
        assert "500" not in errors, errors


def test_a_sample_far_longer_than_the_model_reads_is_refused_with_the_reason(bt):
    limit = 64 * bt.max_length
    with BackgroundServer(create_app(bt)) as server:
        prompt = "Tell me a story."
        body = {"query": [prompt + " word" * (limit // 5 + 10)], "prompts": [prompt]}
        status, answer = _post(server.url + "/get_reward", body)
        assert status == 413 and f"the limit is {limit} (--max-sample-chars)" in answer["error"]
        body = {"prompts": [prompt], "completions": ["y" * limit]}  # (a pointwise model ignores references)
        assert _post(server.url + "/score", body)[0] == 413
        fits = {"query": [prompt + " word" * (limit // 5 - 10)], "prompts": [prompt]}
        assert _post(server.url + "/get_reward", fits)[0] == 200  # under the limit: scored (truncated, warned)
    with BackgroundServer(create_app(bt, max_sample_chars=100)) as server:
        status, answer = _post(server.url + "/get_reward", {"query": ["x" * 101], "prompts": ["x"]})
        assert status == 413 and "the limit is 100" in answer["error"]


def test_both_length_headers_and_a_client_gone_mid_body(bt):
    with BackgroundServer(create_app(bt), read_timeout=3.0) as server:
        both = (b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        answer = _raw(server.port, both, wait=2)  # answered at once, not after a hang
        assert answer.startswith(b"HTTP/1.1 400") and b"send one" in answer, answer[:200]
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # promises 1000 bytes, sends 10, leaves
            s.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"query\": ")
        deadline = time.monotonic() + 10
        while _get(server.url + "/metrics.json")[1]["client_disconnects"] < 1:
            assert time.monotonic() < deadline, "the disconnect was not noticed"
            time.sleep(0.1)
        assert "500" not in _get(server.url + "/metrics.json")[1]["errors"]


def test_auth_scheme_case_utf8_keys_docs_and_health(bt, tiny):
    payload = {"query": ["Hi there. Hello."], "prompts": ["Hi there."], "labels": [""]}
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(bt, api_key="")
    with BackgroundServer(create_app(bt, api_key="clé-ü")) as server:
        url = server.url + "/get_reward"
        assert _post(url, payload, {"Authorization": "bearer clé-ü"})[0] == 200  # scheme is case-insensitive
        assert _post(url, payload, {"Authorization": "BEARER clé-ü"})[0] == 200
        assert _post(url, payload, {"Authorization": "Bearer clé-u"})[0] == 401
        assert _post(url, payload, {"Authorization": "Basic clé-ü"})[0] == 401
        for route in ("/docs", "/redoc", "/openapi.json"):
            assert _raw(server.port, f"GET {route} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                        ).startswith(b"HTTP/1.1 404")
        health = _get(server.url + "/health")[1]
        assert health["model"] == Path(tiny("bt_llama3")).name and "/" not in health["model"]
        assert health["deterministic"] is True


def test_a_failing_request_is_isolated_by_bisection_not_one_by_one():
    """The batcher is generic: here it batches plain strings for a function that refuses any batch with BOOM."""
    calls = []

    def run(items):
        calls.append(len(items))
        if "BOOM" in items:
            raise ValueError("cannot score BOOM")
        return [float(len(x)) for x in items]

    batcher = Batcher(run)
    requests = [Pending(["BOOM" if i == 5 else "x" * i], None) for i in range(32)]
    outcomes = batcher.run_batch(requests)
    assert isinstance(outcomes[5], ValueError) and "BOOM" in str(outcomes[5])
    assert [o[0] for i, o in enumerate(outcomes) if i != 5] == [float(i) for i in range(32) if i != 5]
    assert len(calls) <= 2 * math.ceil(math.log2(32)) + 1, calls  # 11 calls, not 33
    assert sum(calls) <= 32 * (1 + math.ceil(math.log2(32))), calls


def _serve(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "rmplugins", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_serve_cli_errors_are_one_line_and_early(tiny):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        started = time.monotonic()
        res = _serve("--model", tiny("armorm"), "--port", port)
        assert res.returncode == 2 and "cannot listen" in res.stderr and "pick another --port" in res.stderr
        assert "Traceback" not in res.stderr and "loading" not in res.stderr  # refused before the model loaded
        assert time.monotonic() - started < 60
    from rmplugins.serving.transport import bind

    for host in ("192.0.2.1", "nonexistent.invalid"):  # an address this machine lacks, a name that does not resolve
        with pytest.raises(ValueError, match=f"cannot listen on {host}:0: .*--host must be an address of this"):
            bind(host, 0)
    for args, reason in [(["--model", "/nope/model"], "cannot find checkpoint"),
                         (["--model", "/nope/model", "--fallback-reward", "nan"], "must be a finite number"),
                         (["--model", tiny("armorm"), "--kind", "gpm"], "cannot be loaded as kind 'gpm'"),
                         (["--model", tiny("armorm"), "--port", "99999"], "not a TCP port"),
                         (["--model", tiny("armorm"), "--api-key", ""], "API key is empty"),
                         (["--model", tiny("bt"), "--objective-logs"], "kind 'bt', which has none")]:
        res = _serve(*args, "--port", "0") if "--port" not in args else _serve(*args)
        assert res.returncode == 2 and reason in res.stderr and "Traceback" not in res.stderr, res.stderr[-800:]
    res = _serve("--model", "m", "--max-batch-size", "0")
    assert res.returncode == 2 and "not a positive integer" in res.stderr


def test_a_sample_the_model_refuses_fails_alone_and_its_batch_runs_once(tiny):
    """The issue's case: 1% over-long ArmoRM samples made the server re-score their batches one by one. Now the
    model reports the failing row before any forward, and the batch's other samples are scored in one call."""
    from rmplugins.serving import RewardScorer, Sample

    rm = rmplugins.load_reward_model(tiny("armorm"))
    batcher = Batcher(RewardScorer(rm))
    samples = [Sample([{"role": "user", "content": f"Question {i}?"}], f"Answer {i}.") for i in range(8)]
    samples[3] = Sample([{"role": "user", "content": "word " * 20000}], "too long to read")
    rm.engine.stats.reset()
    outcomes = batcher.run_batch([Pending([s], None) for s in samples])
    assert rm.engine.stats.calls == 1  # one forward call for the seven good samples, none repeated
    assert isinstance(outcomes[3], ValueError) and "too long" in str(outcomes[3])
    want = rm.score([s.messages for i, s in enumerate(samples) if i != 3],
                    [s.response for i, s in enumerate(samples) if i != 3])
    got = [o[0]["score"] for i, o in enumerate(outcomes) if i != 3]
    assert got == want  # the same seven sequences in one call: the same numbers, bit for bit
