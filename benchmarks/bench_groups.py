"""Group rewards through the server (``rmplugins serve --group-size N``) against the in-process group score, on the
same samples, in one run; beside the Bradley-Terry path through rmplugins serve and OpenRLHF 0.11.2's own
``serve_rm`` (pointwise: no group to wait for):

  gpm group            GPM's GPO score per sample, each sample one /get_reward request, held until its group of N
  pair_pm group        pair-PM's round-robin win rate per sample, the same way
  in-process           ``rm.rank_many`` over the level's groups in one call (no HTTP, no waiting): the ceiling
  bt rmplugins         a Bradley-Terry model, one request per sample (what a pointwise reward costs)
  bt OpenRLHF serve_rm OpenRLHF's server on the same Bradley-Terry checkpoint

Workload: P prompts x N samples (a rollout; new samples every repeat, the same for every path within it), a
prompt's N one-sample requests sent together by C concurrent clients (a new aiohttp session per request, as
OpenRLHF's client). The paths are interleaved: every repeat runs
each path once per level in a shuffled order, so a load spike on the shared host hits all of them; the table gives
the median and the spread (min-max) over the repeats. "group wait" is the server's own histogram
(``rmplugins_group_wait_seconds``): from a group's first sample to its last. Every group reward is checked against
the in-process one (printed: the largest difference).

    python benchmarks/bench_groups.py                       # CPU: a few minutes on 2 cores
    python benchmarks/bench_groups.py --device cuda --clients 16 128 512 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import _words, build_bench_checkpoint, drive, host_load  # noqa: E402
from peers import openrlhf_serve_rm, rmplugins_serve  # noqa: E402


def groups_workload(n_prompts: int, n: int, seed: int) -> list[tuple[list[dict], list[str]]]:
    rng = random.Random(seed)
    return [([{"role": "user", "content": _words(rng, rng.randint(60, 250))}],
             [_words(rng, rng.randint(10, 80)) for _ in range(n)]) for _ in range(n_prompts)]


def payload(tok, messages, response) -> dict:
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return {"query": [prompt + response + tok.eos_token], "prompts": [prompt], "labels": [""]}


def group_wait(url: str) -> tuple[float, float]:
    """(sum, count) of the server's group-wait histogram."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values.get("rmplugins_group_wait_seconds_sum", 0.0), values.get("rmplugins_group_wait_seconds_count", 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                         os.path.join(tempfile.gettempdir(), "rmplugins-bench")),
                   help="where the benchmark checkpoints are built and kept (env RMPLUGINS_BENCH_DIR)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt: the server's --group-size")
    p.add_argument("--clients", type=int, nargs="+", default=[16, 128], help="concurrent clients, one level each")
    p.add_argument("--samples", type=int, default=64, help="samples per level (at least 2 x clients)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds (best and median reported)")
    p.add_argument("--device", default=None, help="rmplugins' device (default: cpu)")
    p.add_argument("--skip-openrlhf", action="store_true", help="leave out OpenRLHF's serve_rm.py")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    import rmplugins

    torch.manual_seed(0)
    paths = {k: build_bench_checkpoint(k, Path(args.cache_dir) / f"bench-{k}") for k in ("gpm", "pair_pm", "bt")}
    tok = AutoTokenizer.from_pretrained(paths["bt"])  # the policy template: the benchmark tokenizer's own
    device = ["--device", args.device] if args.device else []
    group = ["--group-size", str(args.n), "--group-timeout", "300", "--no-progress", *device]
    servers = {"gpm group": rmplugins_serve(paths["gpm"], str(paths["bt"]), *group),
               "pair_pm group": rmplugins_serve(paths["pair_pm"], str(paths["bt"]), "--kind", "pair_pm", *group),
               "bt rmplugins": rmplugins_serve(paths["bt"], str(paths["bt"]), "--no-progress", *device)}
    if not args.skip_openrlhf:
        servers["bt OpenRLHF serve_rm"] = openrlhf_serve_rm(str(paths["bt"]), param_dtype="bf16")
    models = {k: rmplugins.load_reward_model(paths[k], kind=k, device=args.device) for k in ("gpm", "pair_pm")}
    def level(clients: int, rep: int):
        """Fresh samples for every repeat (a server's prompt cache must not serve a repeat from the last one),
        the same ones for every path within it."""
        prompts = max(args.samples, 2 * clients) // args.n
        work = groups_workload(prompts, args.n, seed=1000 * rep + clients)
        order = [(g, j) for g in range(prompts) for j in range(args.n)]
        return work, order, [payload(tok, work[g][0], work[g][1][j]) for g, j in order]
    print(f"# bench_groups {datetime.datetime.now():%Y-%m-%d %H:%M} {torch.__version__} "
          f"device={args.device or 'cpu'} threads={torch.get_num_threads()} load: {host_load()}", flush=True)
    rows: dict = {}
    wants: dict = {}
    worst = 0.0
    for server in servers.values():
        server.__enter__()
    try:
        for name, server in servers.items():  # warm-up: one group each
            asyncio.run(drive(server.url, level(args.n, -1)[2][:args.n], args.n))
        for rep in range(args.repeat):
            for clients in args.clients:
                work, order, payloads = level(clients, rep)
                runs = list(servers) + ["gpm in-process", "pair_pm in-process"]
                random.Random(rep * 1000 + clients).shuffle(runs)
                for name in runs:
                    kind = name.split()[0]
                    if name.endswith("in-process"):
                        method = "round_robin" if kind == "pair_pm" else None
                        start = time.perf_counter()
                        ranks = models[kind].rank_many([w[0] for w in work], [w[1] for w in work], method)
                        wall = time.perf_counter() - start
                        result = {"sps": len(order) / wall, "p50_ms": float("nan"), "p99_ms": float("nan"),
                                  "failures": 0}
                        rows.setdefault((name, clients), []).append(result)
                        wants[(kind, clients, rep)] = [r.scores for r in ranks]
                        continue
                    url = servers[name].url
                    before = group_wait(url) if name.endswith("group") else None
                    result = asyncio.run(drive(url, payloads, clients))
                    if before is not None:
                        after = group_wait(url)
                        result["wait"] = (after[0] - before[0]) / max(1.0, after[1] - before[1]) * 1000
                        result["order"], result["rep"] = order, rep
                    rows.setdefault((name, clients), []).append(result)
                print(f"repeat {rep + 1}/{args.repeat} c={clients} done", flush=True)
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    for (name, clients), results in rows.items():
        if not name.endswith("group"):
            continue
        for result in results:
            want = wants[(name.split()[0], clients, result["rep"])]
            for (g, j), got in zip(result["order"], result["rewards"]):
                worst = max(worst, abs(got - want[g][j]) if got is not None else float("inf"))

    print("\n| path | clients | samples/s median (min-max) | p50 ms | p99 ms | group wait ms | vs in-process |")
    print("|---|---|---|---|---|---|---|")
    for clients in args.clients:
        for name in list(servers) + ["gpm in-process", "pair_pm in-process"]:
            results = rows[(name, clients)]
            sps = [r["sps"] for r in results]
            kind = name.split()[0]
            ceiling = rows.get((f"{kind} in-process", clients))
            ratio = (f"{statistics.median(sps) / statistics.median([r['sps'] for r in ceiling]):.2f}x"
                     if ceiling and name.endswith("group") else "")
            wait = statistics.median([r["wait"] for r in results]) if name.endswith("group") else float("nan")
            print(f"| {name} | {clients} | {statistics.median(sps):.1f} ({min(sps):.1f}-{max(sps):.1f}) | "
                  f"{statistics.median([r['p50_ms'] for r in results]):.0f} | "
                  f"{statistics.median([r['p99_ms'] for r in results]):.0f} | {wait:.0f} | {ratio} |")
    failures = sum(r["failures"] for v in rows.values() for r in v)
    print(f"\nlargest |server group reward - in-process group reward|: {worst:.2e}; failed requests: {failures}")
    return 0 if failures == 0 and worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
