"""Load benchmark of ``rmplugins serve``: requests/s and p50/p99 latency at 1, 16 and 128 concurrent clients,
dynamic batching vs the one-request-at-a-time path (``--max-batch-size 1 --max-wait-ms 0``), same run.

Clients behave like OpenRLHF's rollout actors: aiohttp, a new session per request, one sample per request,
policy-templated ``query``/``prompts``. Each server runs in its own process through the real CLI.

    python benchmarks/bench_server.py                          # tiny ArmoRM on CPU, ~1-2 minutes
    python benchmarks/bench_server.py --model PATH --policy-tokenizer PATH --device cuda --requests 2000
"""

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the answer is good helpful python code list paris france weather today because example question "
         "explain write story poem number result").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_models(args) -> None:
    """Without --model / --policy-tokenizer: the tiny ArmoRM checkpoint and the tiny Llama-3 policy."""
    if args.model is None or args.policy_tokenizer is None:
        sys.path.insert(0, str(ROOT))
        from rmplugins.tiny import tiny_checkpoint

        args.model = args.model or tiny_checkpoint("armorm")
        args.policy_tokenizer = args.policy_tokenizer or tiny_checkpoint("policy")


def make_payloads(tokenizer, n: int, response_words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        conv = [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))}]
        prompt = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(response_words // 2, response_words)))
        out.append({"query": [prompt + response + tokenizer.eos_token], "prompts": [prompt], "labels": [""]})
    return out


class Server:
    def __init__(self, args, batched: bool):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "rmplugins", "serve", "--model", args.model, "--port", str(self.port),
               "--policy-tokenizer", args.policy_tokenizer]
        if args.device:
            cmd += ["--device", args.device]
        cmd += (["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)] if batched
                else ["--max-batch-size", "1", "--max-wait-ms", "0"])
        cmd += list(getattr(args, "server_args", []))
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        # The server logs every request: to a file, never an unread pipe that would fill up and stall it.
        self.log = tempfile.NamedTemporaryFile(prefix="rmplugins-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    async def wait(self) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + Path(self.log.name).read_text()[-2000:])
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    async def metrics(self) -> dict:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/metrics") as r:
            return await r.json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        os.unlink(self.log.name)


async def drive(url: str, payloads: list[dict], concurrency: int) -> dict:
    timeout = aiohttp.ClientTimeout(total=180)
    latencies, failures = [], 0
    it = iter(payloads)

    async def client():
        nonlocal failures
        for payload in it:  # the shared iterator hands each payload to exactly one client
            t = time.perf_counter()
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url + "/get_reward", json=payload) as r:
                    await r.json()
                    failures += r.status != 200
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"requests": len(latencies), "failures": failures, "rps": len(latencies) / wall,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


async def main_async(args) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.policy_tokenizer)
    rows = []
    for batched in (False, True):
        server = Server(args, batched)
        try:
            await server.wait()
            await drive(server.url, make_payloads(tok, 8, args.response_words, seed=99), 4)  # warm-up
            for c in args.concurrency:
                n = max(args.requests, 2 * c) if c > 1 else max(8, args.requests // 4)
                before = await server.metrics()
                result = await drive(server.url, make_payloads(tok, n, args.response_words, seed=c), c)
                after = await server.metrics()
                batches = after["batches"] - before["batches"]
                result.update(path="batched" if batched else "one-at-a-time", clients=c,
                              mean_batch=round((after["samples"] - before["samples"]) / max(1, batches), 2))
                rows.append(result)
                print(f"{result['path']:>14} c={c:<4} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:8.1f} ms  "
                      f"p99 {result['p99_ms']:8.1f} ms  failures {result['failures']}", flush=True)
        finally:
            server.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="reward model (default: the tiny ArmoRM checkpoint)")
    p.add_argument("--policy-tokenizer", default=None, help="policy tokenizer (default: the tiny Llama-3 policy)")
    p.add_argument("--device", default=None)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--requests", type=int, default=256, help="requests per concurrency level (1 client: a quarter)")
    p.add_argument("--response-words", type=int, default=60, help="longest response, in words")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    default_models(args)
    rows = asyncio.run(main_async(args))
    print("\n| path | clients | req/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['clients']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['mean_batch']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
