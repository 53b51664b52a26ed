"""What a call of a length never seen before costs in half precision on a CPU, with and without the engine's rows
rounded to a grid (``rmplugins/engine/shapes.py``).

oneDNN, which multiplies bf16 matrices on a CPU, builds a kernel for every row count it has not met; a reward call
rarely repeats its length (the server's batches, each step's rollouts), so a benchmark that repeats one workload
never sees that cost. Here, on the Qwen3-0.6B shape of ``bench_limit.py`` in bf16, for each workload size
(P prompts x n candidates), four paths interleaved (shuffled every round) and repeated:

  same length, rounded       one workload every call (its kernels built): the best case
  same length, as it is      the same, the row not rounded (what the filler tokens cost)
  new length, rounded        each call a length no call had before (one sequence k tokens longer, k from 1 to at
                             least 31, each once, shuffled; the same length's workload is the middle k longer),
                             the row rounded to the grid (the default)
  new length, as it is       the same new lengths, not rounded (how the engine ran before)

    python benchmarks/bench_shapes.py                     # about 3 minutes on 2 cores
    python benchmarks/bench_shapes.py --sizes 1x1 1x4 --repeat 12
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_limit import build, workload  # noqa: E402
from common import host_load, workload_sizes  # noqa: E402

PATHS = ["same length, rounded", "same length, as it is", "new length, rounded", "new length, as it is"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["1x1", "1x4", "2x4", "4x8"],
                   help="workloads as PROMPTSxCANDIDATES (prompts of about 300 tokens, candidates of 5-120)")
    p.add_argument("--repeat", type=int, default=8, help="interleaved rounds (best and median reported)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"],
                   help="the model's dtype (float32 multiplies with MKL, which builds nothing per shape)")
    p.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                         os.path.join(tempfile.gettempdir(), "rmplugins-bench")),
                   help="where the benchmark checkpoint is built and kept (env RMPLUGINS_BENCH_DIR)")
    args = p.parse_args(argv)
    sizes = workload_sizes(p, args.sizes)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")

    from transformers import AutoTokenizer

    from rmplugins import load_reward_model
    from rmplugins.engine.shapes import ROUND_BELOW, rounded

    path = build("qwen3", Path(args.cache_dir) / "limit-qwen3-2")
    tok = AutoTokenizer.from_pretrained(path)
    rm = load_reward_model(path, dtype=args.dtype)
    engine = rm.engine
    print(f"# bench_shapes {datetime.datetime.now():%Y-%m-%d %H:%M} torch {torch.__version__} "
          f"threads={torch.get_num_threads()} {args.dtype} Qwen3-0.6B shape; {host_load()}", flush=True)
    print("| workload | row tokens | path | best s | median s | vs same length, rounded |")
    print("|---|---|---|---|---|---|")
    for prompts, n in sizes:
        seqs = workload(tok, prompts, n)
        positions = [[-1] for _ in seqs]
        engine.round_shapes = False  # the row's own length (the floor plus a token per prompt group, as planned)
        engine.stats.reset()
        engine.hidden_at(seqs, positions)
        row = engine.stats.tokens_processed
        # a new length: the first sequence k tokens longer (its last token repeated), each k once, in a shuffled
        # order (lengths go up and down, as a workload's do); the same length: k the middle of that range, so both
        # run as many tokens on average
        extra = list(range(1, max(32, 3 * args.repeat + 8)))
        random.Random(1).shuffle(extra)
        more = iter(extra)

        def longer(k: int) -> list[list[int]]:
            out = [list(s) for s in seqs]
            out[0] = out[0] + out[0][-1:] * k
            return out

        same = longer(len(extra) // 2)

        def new_length(rounding: bool) -> list[list[int]]:
            """A row length no call had, and for the unrounded path never one on the grid, whose kernels a
            rounded call may have built (rows of ROUND_BELOW tokens or more are never rounded: both paths run
            alike there)."""
            while True:
                k = next(more)
                if rounding or rounded(row + k) != row + k or row + k >= ROUND_BELOW:
                    return longer(k)

        def call(label: str) -> float:
            engine.round_shapes = label.endswith("rounded")
            batch = same if label.startswith("same") else new_length(label.endswith("rounded"))
            start = time.perf_counter()
            engine.hidden_at(batch, positions)
            return time.perf_counter() - start

        for label in PATHS[:2]:  # warm-up: compiles the fused kernels, builds the same-length kernels
            for _ in range(2):
                call(label)
        times: dict[str, list[float]] = {label: [] for label in PATHS}
        for rep in range(args.repeat):
            order = list(PATHS)
            random.Random(rep).shuffle(order)
            for label in order:
                times[label].append(call(label))
        base = min(times[PATHS[0]])
        for label in PATHS:
            best, median = min(times[label]), statistics.median(times[label])
            print(f"| {prompts}x{n} | {row} | {label} | {best:.3f} | {median:.3f} | {best / base:.2f}x |",
                  flush=True)
    engine.round_shapes = None
    print(f"\nload at the end: {host_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
