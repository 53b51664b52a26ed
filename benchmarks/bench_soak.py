"""Soak test of ``rmplugins serve``: well-behaved OpenRLHF-style clients and hostile ones at the same time,
bounded in time and in requests, against a real server process on 127.0.0.1.

- good clients: aiohttp, a new session per request, one policy-templated sample each (as OpenRLHF's actors);
- hostile clients, in a loop: malformed JSON, 3000-deep nesting, a 5000-digit number, text/plain bodies, bodies
  over the size limit, non-string content parts and lone surrogates to /score, chat-templated text no template
  reproduces, both length headers, a client gone mid-body, a 1-byte-per-second header, idle connections, and
  well-formed 4 MB samples (under the body limit, over --max-sample-chars: 413 before any work);
- a prober: GET /health every 100 ms.

Reported: good requests/s and p50/p99, every status seen by each side, 5xx answers (must be 0), /health p50/p99
while under attack, server RSS at start, peak and end.

    python benchmarks/bench_soak.py                    # tiny ArmoRM, 60 s
    python benchmarks/bench_soak.py --seconds 300 --good-clients 64
"""

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import payload, short_conversations  # noqa: E402
from peers import ServerProcess, rmplugins_serve  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


HOSTILE_BODIES = [
    ("/get_reward", b"{not json", "application/json"),
    ("/get_reward", b"[" * 3000 + b"]" * 3000, "application/json"),
    ("/get_reward", b'{"query": [' + b"9" * 5000 + b"]}", "application/json"),
    ("/get_reward", b'{"query": ["hi"], "prompts": ["hi"]}', "text/plain"),
    ("/get_reward", b'{"query": ["' + b"x" * (9 << 20) + b'"]}', "application/json"),
    ("/score", json.dumps({"prompts": [[{"role": "user", "content": [{"type": "text", "text": 5}]}]],
                           "completions": ["x"]}).encode(), "application/json"),
    ("/score", b'{"prompts": ["\\ud800"], "completions": ["x"]}', "application/json"),
    ("/get_reward", json.dumps({"query": ["<|im_start|>user: hi<|im_end|>yo"],
                                "prompts": ["<|im_start|>user: hi<|im_end|>"]}).encode(), "application/json"),
]


async def raw(port: int, data: bytes, pause: float = 0.0, close_after: float = 0.0) -> bytes:
    """A raw connection: send ``data`` (one byte every ``pause`` seconds when pause > 0), read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if pause:
            for b in data:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(pause)
        else:
            writer.write(data)
            await writer.drain()
        if close_after:
            await asyncio.sleep(close_after)
            return b"<left>"
        return await asyncio.wait_for(reader.read(200), 60)
    except (ConnectionError, asyncio.TimeoutError):
        return b"<closed>"
    finally:
        writer.close()


async def soak(args, server: ServerProcess, payloads: list[dict]) -> dict:
    deadline = time.monotonic() + args.seconds
    good_status, bad_status = collections.Counter(), collections.Counter()
    latencies, health = [], []
    peak = [rss_mb(server.proc.pid)]
    sent = [0]
    timeout = aiohttp.ClientTimeout(total=180)

    def more() -> bool:
        return time.monotonic() < deadline and sent[0] < args.max_requests

    async def good(i):
        rng = random.Random(i)
        while more():
            sent[0] += 1
            t = time.perf_counter()
            try:
                async with aiohttp.ClientSession(timeout=timeout) as s, \
                        s.post(server.url + "/get_reward", json=rng.choice(payloads)) as r:
                    await r.read()
                    good_status[r.status] += 1
            except aiohttp.ClientError as err:
                good_status[type(err).__name__] += 1
            latencies.append(time.perf_counter() - t)

    big = dict(payloads[0])
    big["query"] = [big["prompts"][0] + "word " * 800_000]  # ~4 MB: under the 8 MiB body limit, over the sample limit

    async def hostile(i):
        rng = random.Random(1000 + i)
        while more():
            sent[0] += 1
            kind = rng.randrange(len(HOSTILE_BODIES) + 5)
            if kind < len(HOSTILE_BODIES):
                path, body, ctype = HOSTILE_BODIES[kind]
                try:
                    async with aiohttp.ClientSession(timeout=timeout) as s, \
                            s.post(server.url + path, data=body, headers={"Content-Type": ctype}) as r:
                        await r.read()
                        bad_status[r.status] += 1
                except aiohttp.ClientError as err:
                    bad_status[type(err).__name__] += 1
                continue
            which = kind - len(HOSTILE_BODIES)
            head = b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            if which == 0:
                both = b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                answer = await raw(server.port, head + both)
            elif which == 1:
                answer = await raw(server.port, head + b"Content-Length: 1000\r\n\r\n{\"query\"", close_after=0.05)
            elif which == 2:
                answer = await raw(server.port, head, pause=1.0)  # slowloris: cut off by --read-timeout
            elif which == 3:
                answer = await raw(server.port, b"")  # idle: the server must close it after --read-timeout
            else:  # a well-formed sample of ~4 MB: parsed off the event loop, refused as too long
                try:
                    async with aiohttp.ClientSession(timeout=timeout) as s, \
                            s.post(server.url + "/get_reward", json=big) as r:
                        await r.read()
                        answer = f"big {r.status}".encode()
                except aiohttp.ClientError as err:
                    answer = type(err).__name__.encode()
            bad_status[answer[:12].decode(errors="replace") or "<closed>"] += 1

    async def prober():
        while time.monotonic() < deadline and sent[0] < args.max_requests:
            t = time.perf_counter()
            try:
                async with aiohttp.ClientSession(timeout=timeout) as s, s.get(server.url + "/health") as r:
                    await r.read()
            except aiohttp.ClientError:
                pass
            health.append(time.perf_counter() - t)
            peak.append(rss_mb(server.proc.pid))
            await asyncio.sleep(0.1)

    start_rss = peak[0]
    t0 = time.perf_counter()
    await asyncio.gather(*(good(i) for i in range(args.good_clients)),
                         *(hostile(i) for i in range(args.hostile_clients)), prober())
    wall = time.perf_counter() - t0
    async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics.json") as r:
        metrics = await r.json()
    good_total = sum(good_status.values())
    return {"seconds": round(wall, 1), "good_requests": good_total, "good_rps": round(good_total / wall, 1),
            "good_p50_ms": round(pct(latencies, 0.5), 1), "good_p99_ms": round(pct(latencies, 0.99), 1),
            "good_statuses": dict(good_status), "hostile_statuses": dict(bad_status),
            "server_5xx": {k: v for k, v in metrics["errors"].items() if k.startswith("5")},
            "server_errors": metrics["errors"], "client_disconnects": metrics.get("client_disconnects"),
            "health_p50_ms": round(pct(health, 0.5), 1), "health_p99_ms": round(pct(health, 0.99), 1),
            "rss_mb": {"start": round(start_rss), "peak": round(max(peak)), "end": round(rss_mb(server.proc.pid))}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="reward model (default: the tiny ArmoRM checkpoint)")
    p.add_argument("--policy-tokenizer", default=None, help="policy tokenizer (default: the tiny Llama-3 policy)")
    p.add_argument("--device", default=None, help="the server's --device (default: its own choice)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the soak runs")
    p.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests in all")
    p.add_argument("--good-clients", type=int, default=32, help="well-behaved clients (one sample per request)")
    p.add_argument("--hostile-clients", type=int, default=16, help="hostile clients, running at the same time")
    p.add_argument("--read-timeout", type=float, default=5.0, help="the server's --read-timeout")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from rmplugins.testing import tiny_checkpoint

    model = args.model or tiny_checkpoint("armorm")
    policy = args.policy_tokenizer or tiny_checkpoint("policy")
    tok = AutoTokenizer.from_pretrained(policy)
    payloads = [payload(tok, m, r) for m, r in short_conversations(512, seed=5)]
    extra = ["--max-batch-size", "64", "--max-wait-ms", "5", "--read-timeout", str(args.read_timeout)]
    server = rmplugins_serve(model, policy, *extra, *(["--device", args.device] if args.device else []))
    try:
        server.wait()
        result = asyncio.run(soak(args, server, payloads))
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
