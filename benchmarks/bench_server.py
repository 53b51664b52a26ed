"""Reward-server benchmark on RLHF rollout traffic, one run, same checkpoint and same samples for every path:

  rmplugins batched     ``rmplugins serve`` as configured by default: dynamic batching (a prompt's samples in one
                        batch run it once) and the prompt cache (samples of a prompt in later batches reuse it)
  ... no prompt cache   the same with ``--prompt-cache-tokens 0``
  ... 1-at-a-time       ``--max-batch-size 1 --max-wait-ms 0 --prompt-cache-tokens 0``: each request alone
  rmplugins on vLLM     ``rmplugins serve --engine vllm``: the same protocol, each request straight to an AsyncLLM
                        (vLLM's scheduler batches, its prefix caching keeps prompts)
  OpenRLHF serve_rm     OpenRLHF 0.11.2's own ``openrlhf/cli/serve_rm.py``, unmodified (the server a user would run
                        instead; it scores each request's queries in one padded forward, requests one after another)
  in-process ceiling    ``rm.score`` over all of a level's samples in one call, no HTTP

Workloads (``--workload``):
  rollout (default)  P prompts x n samples, the way OpenRLHF and verl rollout actors send them: the n samples of a
                     prompt are n one-sample requests sent together; prompts of about 200-2000 tokens of varied
                     text (a third multi-turn), responses of about 20-600 tokens, the policy's chat template.
  short              the old workload: 8-40-word prompts, each request a different prompt (HTTP-bound).
Clients are aiohttp, a new session per request, as OpenRLHF's ``_fetch_rewards_via_http``. Each level's rewards
from every server are checked against the in-process ones.

The model is a benchmark-sized random Bradley-Terry Llama (``common.build_bench_checkpoint``: hidden 512, 4 layers,
the tiny Llama-3 tokenizer, the layout of FsfairX-LLaMA3-RM), run by every path in ``--dtype`` (bf16 by default:
OpenRLHF's server offers bf16 or fp16 only) with SDPA attention in OpenRLHF's.

    python benchmarks/bench_server.py                                  # CPU: about 15 minutes on 2 cores
    python benchmarks/bench_server.py --concurrency 1 16 --skip-openrlhf --workload short
    python benchmarks/bench_server.py --model PATH --device cuda --concurrency 1 16 128 512
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import _words, build_bench_checkpoint, drive, host_load  # noqa: E402
from peers import openrlhf_serve_rm, rmplugins_serve  # noqa: E402

SHORTWORDS = ("the answer is good helpful python code list paris france weather today because example question "
               "explain write story poem number result").split()


# ----------------------------------------------------------------------------- workloads
def rollout_conversations(n_prompts: int, n_samples: int, seed: int) -> list[tuple[list[dict], str]]:
    """(messages, response) for P prompts x n samples, a prompt's samples adjacent (sent together)."""
    rng = random.Random(seed)
    out = []
    for p in range(n_prompts):
        conv = []
        if p % 5 == 0:
            conv.append({"role": "system", "content": _words(rng, rng.randint(10, 40))})
        turns = 1 if p % 3 else rng.randint(2, 3)  # a third multi-turn
        budget = rng.randint(150, 1500)  # words of prompt text in all
        for t in range(turns):
            share = budget // turns
            conv.append({"role": "user", "content": _words(rng, max(5, share - (share // 3 if t < turns - 1 else 0)))})
            if t < turns - 1:
                conv.append({"role": "assistant", "content": _words(rng, max(5, share // 3))})
        for _ in range(n_samples):
            out.append((conv, _words(rng, rng.randint(15, 450))))
    return out


def short_conversations(n: int, seed: int) -> list[tuple[list[dict], str]]:
    rng = random.Random(seed)
    return [([{"role": "user", "content": " ".join(rng.choice(SHORTWORDS) for _ in range(rng.randint(8, 40)))}],
             " ".join(rng.choice(SHORTWORDS) for _ in range(rng.randint(30, 60)))) for _ in range(n)]


def payload(tok, messages: list[dict], response: str) -> dict:
    """What an OpenRLHF rollout actor posts: the templated prompt, and prompt + response + EOS as the query."""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return {"query": [prompt + response + tok.eos_token], "prompts": [prompt], "labels": [""]}


def token_accounting(tok, convs) -> dict:
    """Requested tokens (one forward per sample) and the unique-token floor (each distinct prompt once, plus each
    response), tokenized as the reward model reads them."""
    requested, floor, seen = 0, 0, set()
    for messages, response in convs:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        n_all = len(tok(prompt + response + tok.eos_token, add_special_tokens=False)["input_ids"])
        requested += n_all
        floor += n_all - n_prompt + (0 if prompt in seen else n_prompt)
        seen.add(prompt)
    return {"requested": requested, "floor": floor}


def level_conversations(args, clients: int) -> list[tuple[list[dict], str]]:
    if args.workload == "short":
        return short_conversations(max(args.min_samples, args.samples_per_client * clients), seed=clients)
    prompts = max(math.ceil(args.min_samples / args.n), math.ceil(args.samples_per_client * clients / args.n))
    return rollout_conversations(prompts, args.n, seed=clients)


# ----------------------------------------------------------------------------- driving a server
def get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def run_server(label: str, server, levels, warmup) -> list[dict]:
    rows = []
    with server:
        asyncio.run(drive(server.url, warmup, 4))
        for clients, convs, payloads in levels:
            before = get_json(server.url + "/metrics.json") if label.startswith("rmplugins") else None
            result = asyncio.run(drive(server.url, payloads, clients))
            if before is not None:
                after = get_json(server.url + "/metrics.json")
                if "engine" in after:  # rmplugins' batches and engine (on vLLM, both are vLLM's own)
                    batches = after["batches"] - before["batches"]
                    result["mean_batch"] = round((after["samples"] - before["samples"]) / max(1, batches), 1)
                    result["processed"] = (after["engine"]["tokens_processed"]
                                           - before["engine"]["tokens_processed"])
            result.update(path=label, clients=clients)
            rows.append(result)
            print(f"{label:>22} c={clients:<4} {result['sps']:8.2f} samples/s  p50 {result['p50_ms']:9.1f} ms  "
                  f"p99 {result['p99_ms']:9.1f} ms  failures {result['failures']}", flush=True)
    return rows


def in_process(rm, levels, repeat: int = 2) -> list[dict]:
    """``rm.score`` over each level's samples in one call: the best of ``repeat`` runs (a single run on a shared
    host varies by up to 20%)."""
    rows = []
    rm.score([m for m, _ in levels[0][1][:8]], [r for _, r in levels[0][1][:8]])  # warm-up
    for clients, convs, _ in levels:
        wall = float("inf")
        for _ in range(repeat):
            rm.engine.stats.reset()
            start = time.perf_counter()
            rewards = rm.score([m for m, _ in convs], [r for _, r in convs])
            wall = min(wall, time.perf_counter() - start)
        rows.append({"path": "in-process ceiling", "clients": clients, "samples": len(convs), "failures": 0,
                     "seconds": wall, "sps": len(convs) / wall, "p50_ms": float("nan"), "p99_ms": float("nan"),
                     "rewards": rewards, "processed": rm.engine.stats.tokens_processed})
        print(f"{'in-process ceiling':>22} c={clients:<4} {len(convs) / wall:8.2f} samples/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a Bradley-Terry checkpoint (default: the benchmark-sized Llama)")
    p.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                         str(Path(tempfile.gettempdir()) / "rmplugins-bench")),
                   help="where the benchmark checkpoints are built and kept (env RMPLUGINS_BENCH_DIR)")
    p.add_argument("--workload", choices=("rollout", "short"), default="rollout", help="see above")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (rollout workload)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 128, 512],
                   help="concurrent clients, one level each")
    p.add_argument("--samples-per-client", type=int, default=1, help="samples per level = this x clients ...")
    p.add_argument("--min-samples", type=int, default=64, help="... and at least this many")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"), help="every path's dtype")
    p.add_argument("--device", default=None, help="rmplugins' device (OpenRLHF's server uses device_map='auto')")
    p.add_argument("--max-batch-size", type=int, default=64, help="the batched servers' --max-batch-size")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="the rmplugins servers' --max-wait-ms")
    p.add_argument("--skip-openrlhf", action="store_true", help="leave out OpenRLHF's serve_rm.py")
    p.add_argument("--skip-one-at-a-time", action="store_true", help="leave out the 1-at-a-time path")
    p.add_argument("--skip-no-cache", action="store_true", help="leave out the path without the prompt cache")
    p.add_argument("--skip-vllm", action="store_true", help="leave out `rmplugins serve --engine vllm`")
    p.add_argument("--json", default=None, help="also write every row (rewards left out) to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoTokenizer

    from rmplugins import load_reward_model

    model = args.model or str(build_bench_checkpoint("bt", Path(args.cache_dir) / "bench-bt"))
    tok = AutoTokenizer.from_pretrained(model)
    dtype = {"bf16": "bfloat16", "fp16": "float16"}[args.dtype]
    threads = torch.get_num_threads()
    print(f"# rmplugins server benchmark, {datetime.date.today()}, {args.workload} workload, {dtype}, "
          f"{threads} torch threads, {host_load()}")
    levels = []
    for c in args.concurrency:
        convs = level_conversations(args, c)
        levels.append((c, convs, [payload(tok, m, r) for m, r in convs]))
    for c, convs, _ in levels:
        acc = token_accounting(tok, convs)
        print(f"level c={c}: {len(convs)} samples, {acc['requested']} tokens requested, unique-token floor "
              f"{acc['floor']} ({acc['requested'] / acc['floor']:.2f}x)")
    warmup = [payload(tok, m, r) for m, r in rollout_conversations(1, 4, seed=999)]

    rm = load_reward_model(model, device=args.device or "cpu", dtype=dtype)
    rows = in_process(rm, levels)
    ceiling = {r["clients"]: r for r in rows}
    extra = ["--dtype", dtype, "--max-wait-ms", str(args.max_wait_ms)] + (["--device", args.device]
                                                                            if args.device else [])
    batched = extra + ["--max-batch-size", str(args.max_batch_size)]
    servers = [("rmplugins batched", lambda: rmplugins_serve(model, model, *batched))]
    if not args.skip_no_cache:
        servers.append(("rmplugins no prompt cache", lambda: rmplugins_serve(model, model, *batched,
                                                                             "--prompt-cache-tokens", "0")))
    if not args.skip_one_at_a_time:
        servers.append(("rmplugins 1-at-a-time", lambda: rmplugins_serve(model, model, "--dtype", dtype,
                                                                         "--max-batch-size", "1",
                                                                         "--max-wait-ms", "0",
                                                                         "--prompt-cache-tokens", "0")))
    if not args.skip_vllm:  # vLLM's scheduler and prefix caching instead of rmplugins' batcher and engine
        servers.append(("rmplugins on vLLM", lambda: rmplugins_serve(
            model, model, "--engine", "vllm", "--dtype", dtype, "--vllm-arg", f"kv_cache_memory_bytes={1 << 30}")))
    if not args.skip_openrlhf:
        servers.append(("OpenRLHF serve_rm", lambda: openrlhf_serve_rm(model, param_dtype=args.dtype,
                                                                       attn_implementation="sdpa")))
    for label, start in servers:
        rows += run_server(label, start(), levels, warmup)

    # every server's rewards against the in-process ones (bf16: batch composition moves the last bits)
    for r in rows:
        want = ceiling[r["clients"]]["rewards"]
        r["max_abs_diff"] = max(abs(a - b) for a, b in zip(r["rewards"], want) if a is not None)
    print("\n| path | clients | samples | samples/s | vs OpenRLHF | vs in-process | p50 ms | p99 ms | mean batch "
          "| tokens processed | max abs diff |\n|---|---|---|---|---|---|---|---|---|---|---|")
    orl = {r["clients"]: r for r in rows if r["path"] == "OpenRLHF serve_rm"}
    for r in rows:
        vs_orl = f"{r['sps'] / orl[r['clients']]['sps']:.2f}x" if r["clients"] in orl else "-"
        print(f"| {r['path']} | {r['clients']} | {r['samples']} | {r['sps']:.2f} | {vs_orl} | "
              f"{r['sps'] / ceiling[r['clients']]['sps']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r.get('mean_batch', '-')} | {r.get('processed', '-')} | {r['max_abs_diff']:.3g} |")
    ours = {r["clients"]: r for r in rows if r["path"] == "rmplugins batched"}
    print("\n| measure | result | target |\n|---|---|---|")
    if 128 in ours and 128 in orl:
        print(f"| samples/s at 128 clients, rmplugins / OpenRLHF | {ours[128]['sps'] / orl[128]['sps']:.2f}x | "
              ">= 5x |")
    if 128 in ours:
        print(f"| samples/s at 128 clients, rmplugins / in-process | {ours[128]['sps'] / ceiling[128]['sps']:.2f} | "
              ">= 0.85 |")
    if 16 in ours:
        print(f"| p99 / p50 at 16 clients | {ours[16]['p99_ms'] / ours[16]['p50_ms']:.2f} | <= 3 |")
    print(f"after: {host_load()}")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "rewards"} for r in rows],
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
