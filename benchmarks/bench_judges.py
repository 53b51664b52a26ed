"""Generative judges, side by side in one run on the same benchmark-sized judge (a random Llama of the ``cpu`` shape,
loaded with ``kind="genrm"``) and the same judge prompts (the family's own encoding gives both engines the same
token ids):

1. best-of-n with a pairwise logit judge (``mt-bench-logits``, both orders of every pair):
   - rmplugins' engine, tournament (at most 2n - 3 pairs; each judge prompt's shared prefix run once);
   - rmplugins' engine, round robin (all pairs, both orders);
   - vLLM (prefix caching on), all ordered pairs (round robin): what a vLLM deployment of the judge does;
   - vLLM, tournament;
2. a generating judge (``j1-pointwise``, a fixed answer length): seconds per candidate on transformers' ``generate``
   and on vLLM.

Every path is timed interleaved with the others, ``--repeat`` rounds (best and median), the load average printed
before each round: a path timed after another measures the machine's load, not the code.

    python benchmarks/bench_judges.py                  # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_bench_checkpoint, host_load, synthetic_groups, timed  # noqa: E402

from rmplugins import PRESETS, load_reward_model  # noqa: E402

VLLM_ARGS = {"kv_cache_memory_bytes": 1 << 30, "enforce_eager": True, "enable_prefix_caching": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4, help="prompts in the workload")
    ap.add_argument("--n", type=int, default=8, help="candidates per prompt")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (best and median reported)")
    ap.add_argument("--answer-tokens", type=int, default=32, help="tokens a generating judge writes per judgement")
    ap.add_argument("--no-vllm", action="store_true", help="leave out the judge on vLLM")
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "rmplugins-bench"),
                    help="where the benchmark judge checkpoint is built and kept")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    path = build_bench_checkpoint("pair_pm", Path(args.dir) / "judge-cpu")  # a causal LM: the judge's layout
    groups = synthetic_groups(args.prompts, args.n, prompt_words=(60, 150), candidate_words=(10, 60), seed=7)
    prompts, cands = [p for p, _ in groups], [c for _, c in groups]
    pairwise = PRESETS["mt-bench-logits"]
    generating = PRESETS["j1-pointwise"].with_options(max_new_tokens=args.answer_tokens)

    judges = {"engine": load_reward_model(path, kind="genrm", judge=pairwise, device="cpu", dtype="float32")}
    writers = {"transformers": load_reward_model(path, kind="genrm", judge=generating, device="cpu",
                                                 dtype="float32")}
    if not args.no_vllm:
        judges["vllm"] = load_reward_model(path, kind="genrm", judge=pairwise, engine="vllm", dtype="float32",
                                           vllm_args=dict(VLLM_ARGS))
        writers["vllm"] = load_reward_model(path, kind="genrm", judge=generating, engine="vllm", dtype="float32",
                                            vllm_args=dict(VLLM_ARGS))
    paths = {f"{name} {method}": (rm, method) for name, rm in judges.items()
             for method in ("tournament", "round_robin")}
    flat = [p for p, c in groups for _ in c]
    per_candidate = [c for _, cs in groups for c in cs]

    def best_of_n(rm, method):
        return lambda: rm.rank_many(prompts, cands, method)

    def write(rm):
        return lambda: rm.score(flat, per_candidate)

    print(f"# rmplugins generative-judge benchmark, {datetime.date.today()}, {torch.get_num_threads()} threads, "
          f"{args.prompts} prompts x {args.n} candidates, judge: Llama hidden 512 x 4 layers (random), float32")
    for name, (rm, method) in paths.items():  # warm-up (vLLM compiles nothing here: eager)
        best_of_n(rm, method)()
    for name, rm in writers.items():
        write(rm)()
    times: dict[str, list[float]] = {name: [] for name in list(paths) + [f"generate {n}" for n in writers]}
    judged: dict[str, int] = {}
    for round_ in range(args.repeat):
        print(f"round {round_ + 1}: {host_load()}")
        for name, (rm, method) in paths.items():
            before = rm.judged
            seconds, rankings = timed(best_of_n(rm, method))
            times[name].append(seconds)
            judged[name] = rm.judged - before
        for name, rm in writers.items():
            seconds, _ = timed(write(rm))
            times[f"generate {name}"].append(seconds)

    print(f"\n{'path':<26}{'judge prompts':>14}{'best s':>9}{'median s':>10}{'x vLLM all pairs':>18}")
    reference = min(times.get("vllm round_robin", times["engine round_robin"]))
    for name in paths:
        best, median = min(times[name]), statistics.median(times[name])
        print(f"{name:<26}{judged[name]:>14}{best:>9.2f}{median:>10.2f}{reference / best:>17.2f}x")
    n_cands = len(per_candidate)
    print(f"\ngenerating judge, {args.answer_tokens} answer tokens per candidate ({n_cands} candidates):")
    for name in writers:
        best = min(times[f"generate {name}"])
        print(f"  {name:<14} {best:7.2f} s best, {1000 * best / n_cands:7.1f} ms per candidate, median "
              f"{statistics.median(times[f'generate {name}']):.2f} s")
    for rm in list(judges.values()) + list(writers.values()):
        rm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
