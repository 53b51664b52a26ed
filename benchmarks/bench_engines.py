"""rmplugins' two engines side by side, in one run, on the same benchmark-sized checkpoints and inputs:
``load_reward_model(path)`` (transformers, prefix sharing) against ``load_reward_model(path, engine="vllm")``
(vLLM's CPU build here: its scheduler, its kernels; prefix caching as vLLM sets it for each model).

Workloads, each P prompts x n candidates (rollout lengths: prompts of 150-1500 words, responses of 15-450):
- Bradley-Terry and ArmoRM: ``rm.score`` of every sample (a GRPO step's reward call);
- RLHFlow pair-PM: ``rm.rank_many(..., method="tournament")`` (best-of-n);
- GPM: ``rm.rank_many`` (GPO scores, best-of-n).

For each: both engines loaded side by side, a warm-up call each, then ``repeat`` rounds that time both engines in
alternating order (a load spike on a shared host hits both); best and median seconds, each timed call cold (vLLM's
prefix cache reset first; rmplugins' prompt cache is off in-process), the ratio, the largest difference between the
engines' outputs, and the unique-token floor (what any engine must process at least). The load average is printed
before and after.

    python benchmarks/bench_engines.py                    # a few minutes on 2 CPU cores
    python benchmarks/bench_engines.py --prompts 4 --n 16
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_bench_checkpoint, host_load, synthetic_groups, timed  # noqa: E402

from rmplugins import load_reward_model  # noqa: E402
from rmplugins.engine.prefix import unique_token_floor  # noqa: E402
from rmplugins.inputs import to_conversation  # noqa: E402

KINDS = ("bt", "armorm", "pair_pm", "gpm")


def workload(kind: str, rm, groups):
    """(the call, what it returns as a flat list of numbers)."""
    prompts = [p for p, cands in groups for _ in cands]
    completions = [c for _, cands in groups for c in cands]
    if kind in ("bt", "armorm"):
        return lambda: rm.score(prompts, completions)
    method = "tournament" if kind == "pair_pm" else None
    return lambda: [s for r in rm.rank_many([p for p, _ in groups], [c for _, c in groups], method) for s in r.scores]


def floor_tokens(kind: str, rm, groups) -> tuple[int | str, int | str]:
    """(tokens requested as one sequence per candidate, the unique-token floor) of the candidates' encodings; the
    pair-PM's judge prompts depend on the plan, so none is given for it."""
    convs = [to_conversation(p, c) for p, cands in groups for c in cands]
    if kind == "pair_pm":
        return "-", "-"
    seqs = [rm.encode(c.messages)[0] if kind == "gpm" else rm.encode_row(c) for c in convs]
    seqs = [s[0] if kind == "armorm" else s for s in seqs]
    return sum(len(s) for s in seqs), unique_token_floor(seqs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                         str(Path(tempfile.gettempdir()) / "rmplugins-bench")),
                   help="where the benchmark checkpoints are built and kept (env RMPLUGINS_BENCH_DIR)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                   help="model families to run (Bradley-Terry, ArmoRM, pair-PM, GPM)")
    p.add_argument("--prompts", type=int, default=4, help="prompts in the workload")
    p.add_argument("--n", type=int, default=8, help="candidates per prompt")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds (best and median reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts and candidates")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache = Path(args.cache_dir)
    groups = synthetic_groups(args.prompts, args.n, prompt_words=(150, 1500), candidate_words=(15, 450),
                              seed=args.seed)
    print(f"# rmplugins engines benchmark, {datetime.date.today()}, torch {torch.__version__}, {args.threads} "
          f"CPU threads, float32, {args.prompts} prompts x {args.n} candidates, {host_load()}")
    rows = []
    for kind in args.kinds:
        path = build_bench_checkpoint(kind, cache / f"bench-{kind.replace('_', '-')}")
        # both engines loaded side by side and timed interleaved (each round runs both, in alternating order), so a
        # load spike on the shared host hits both rather than one; best and median over the rounds
        models = {"transformers": load_reward_model(path, kind=kind, device="cpu", dtype="float32"),
                  "vllm": load_reward_model(path, kind=kind, engine="vllm", dtype="float32",
                                            vllm_args={"kv_cache_memory_bytes": 1 << 30})}
        runs = {engine: workload(kind, rm, groups) for engine, rm in models.items()}
        times, outputs = {engine: [] for engine in models}, {}

        def call(engine):  # each timed call starts cold: vLLM's prefix cache would otherwise hold every sequence
            if engine == "vllm":
                models["vllm"].backend.llm.reset_prefix_cache()
            return runs[engine]()

        for engine in models:
            call(engine)  # warm-up
        for r in range(args.repeat):
            for engine in (("transformers", "vllm") if r % 2 == 0 else ("vllm", "transformers")):
                seconds, outputs[engine] = timed(lambda: call(engine))
                times[engine].append(seconds)
        requested, floor = floor_tokens(kind, models["transformers"], groups)
        caching = models["vllm"].backend.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        models["vllm"].shutdown()
        for engine in models:
            print(f"{kind:>8} {engine:>12}: best {min(times[engine]):7.2f} s, median "
                  f"{statistics.median(times[engine]):7.2f} s", flush=True)
        diff = max(abs(a - b) for a, b in zip(outputs["transformers"], outputs["vllm"]))
        rows.append((kind, times["transformers"], times["vllm"], diff, requested, floor, caching))
    print("\n| workload | transformers engine s (best / median) | vLLM engine s (best / median) | vLLM / "
          "transformers (best) | max abs diff | tokens requested | unique-token floor | vLLM prefix caching |\n"
          "|---|---|---|---|---|---|---|---|")
    names = {"bt": "Bradley-Terry score", "armorm": "ArmoRM score", "pair_pm": "pair-PM best-of-n tournament",
             "gpm": "GPM best-of-n (GPO)"}
    for kind, ours, theirs, diff, requested, floor, caching in rows:
        print(f"| {names[kind]} | {min(ours):.2f} / {statistics.median(ours):.2f} | {min(theirs):.2f} / "
              f"{statistics.median(theirs):.2f} | {min(theirs) / min(ours):.2f}x | {diff:.1e} | {requested} | "
              f"{floor} | {'on' if caching else 'off'} |")
    print(f"after: {host_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
