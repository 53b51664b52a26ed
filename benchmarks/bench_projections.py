"""The keys' and values' projections as two bf16 products or as one of their joint weights
(``rmplugins/engine/projections.py``), on a CPU.

oneDNN (3.12, AMX) splits some bf16 products unevenly over its threads: on 2 threads the ``[rows, 1024] x [1024,
1024]`` product of a Qwen3-0.6B-shaped model's keys (and again its values) runs on one of them for a band of row
counts. Two parts, each path interleaved with the other (shuffled every round) and repeated, best and median:

  products   GFLOP/s of the keys and values as two products and as one, at row counts on the engine's grid of
             lengths (``rmplugins/engine/shapes.py``) from 256 to 2,880 (and for ``--shapes``, other backbones'
             widths, below 2,048 rows)
  calls      whole ``rm.engine.hidden_at`` calls of ``bench_limit.py``'s Qwen3-0.6B shape in bf16, joint and not,
             for workloads whose rows fall inside the band and outside it (rows of 2,048 tokens or more run two
             products either way: there the joint one measured no faster)

    python benchmarks/bench_projections.py                # about 3 minutes on 2 cores
    python benchmarks/bench_projections.py --sizes 2x4 --repeat 12
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_limit import build, workload  # noqa: E402
from common import host_load, int_pairs, workload_sizes  # noqa: E402

ROWS = [256, 512, 768, 960, 1024, 1088, 1152, 1216, 1280, 1344, 1408, 1472, 1536, 1792, 2048, 2336, 2880]


def products(hidden: int, kv: int, rows: list[int], repeat: int) -> None:
    """The keys and values of ``rows`` tokens as two ``[rows, hidden] x [hidden, kv]`` products and as one
    ``[hidden, 2 kv]``, interleaved: GFLOP/s (best) and the joint product's speed-up (best and median)."""
    torch.manual_seed(0)
    k, v = (torch.randn(kv, hidden, dtype=torch.bfloat16) / hidden ** 0.5 for _ in range(2))
    joint = torch.cat([k, v])
    print("\n| rows | two products GFLOP/s | joint GFLOP/s | joint faster by (best) | (median) |")
    print("|---|---|---|---|---|")
    for n in rows:
        x = torch.randn(n, hidden, dtype=torch.bfloat16)
        paths = {"two": lambda: (F.linear(x, k), F.linear(x, v)), "joint": lambda: F.linear(x, joint)}
        for f in paths.values():
            f(), f()
        times: dict[str, list[float]] = {name: [] for name in paths}
        for rep in range(repeat):
            order = list(paths)
            random.Random(rep).shuffle(order)
            for name in order:
                start = time.perf_counter()
                paths[name]()
                times[name].append(time.perf_counter() - start)
        flops = 2 * n * hidden * 2 * kv
        two, one = times["two"], times["joint"]
        print(f"| {n} | {flops / min(two) / 1e9:.0f} | {flops / min(one) / 1e9:.0f} | {min(two) / min(one):.2f}x | "
              f"{statistics.median(two) / statistics.median(one):.2f}x |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["2x4", "2x8", "4x8"],
                   help="workloads for whole calls, as PROMPTSxCANDIDATES (prompts of about 300 tokens, candidates "
                        "of 5-120; 2x4 and 2x8 lay out rows inside the band on 2 threads, 4x8 one past it)")
    p.add_argument("--repeat", type=int, default=8, help="interleaved rounds of whole calls (best and median)")
    p.add_argument("--product-repeat", type=int, default=20, help="interleaved rounds of each product")
    p.add_argument("--shapes", nargs="*", default=[],
                   help="other backbones' products too, as HIDDENxKV (the width of the keys, and of the values), "
                        "e.g. 2048x512 for Llama-3.2-1B, 1536x256 for Qwen2.5-1.5B")
    p.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                         os.path.join(tempfile.gettempdir(), "rmplugins-bench")),
                   help="where the benchmark checkpoint is built and kept (env RMPLUGINS_BENCH_DIR)")
    args = p.parse_args(argv)
    sizes = workload_sizes(p, args.sizes)
    if args.repeat < 1 or args.product_repeat < 1:
        p.error("--repeat and --product-repeat must be at least 1")
    shapes = int_pairs(p, "--shapes", args.shapes, "HIDDENxKV", "2048x512")

    from transformers import AutoTokenizer

    from rmplugins import load_reward_model
    from rmplugins.engine import projections

    path = build("qwen3", Path(args.cache_dir) / "limit-qwen3-2")
    tok = AutoTokenizer.from_pretrained(path)
    rm = load_reward_model(path, dtype="bfloat16")
    engine, config = rm.engine, rm.engine.backbone.config
    kv = config.num_key_value_heads * (getattr(config, "head_dim", None) or config.hidden_size //
                                       config.num_attention_heads)
    print(f"# bench_projections {datetime.datetime.now():%Y-%m-%d %H:%M} torch {torch.__version__} "
          f"threads={torch.get_num_threads()} bf16 Qwen3-0.6B shape (hidden {config.hidden_size}, keys and values "
          f"{kv} each); {host_load()}", flush=True)
    products(config.hidden_size, kv, ROWS, args.product_repeat)
    for hidden, width in shapes:
        print(f"\nhidden {hidden}, keys and values {width} each (joined by the engine only if {2 * width} >= "
              f"{projections.JOIN_MIN_WIDTH})")
        products(hidden, width, [n for n in ROWS if n < projections.JOIN_BELOW], args.product_repeat)

    print("\n| workload | row tokens | path | best s | median s | joint faster by (best) | (median) |")
    print("|---|---|---|---|---|---|---|")
    try:
        for prompts, n in sizes:
            seqs = workload(tok, prompts, n)
            positions = [[-1] for _ in seqs]
            engine.stats.reset()
            engine.hidden_at(seqs, positions)
            row = engine.stats.tokens_padded  # one forward: the row as it runs (rounded to the grid)

            def call(joint: bool) -> float:
                projections.JOIN_KEYS_VALUES = joint
                start = time.perf_counter()
                engine.hidden_at(seqs, positions)
                return time.perf_counter() - start

            for joint in (True, False):  # warm-up: kernels compiled and built for this row
                call(joint), call(joint)
            times: dict[bool, list[float]] = {True: [], False: []}
            for rep in range(args.repeat):
                order = [True, False]
                random.Random(rep).shuffle(order)
                for joint in order:
                    times[joint].append(call(joint))
            best = {j: min(t) for j, t in times.items()}
            median = {j: statistics.median(t) for j, t in times.items()}
            for joint in (False, True):
                gain = (f"{best[False] / best[True]:.2f}x | {median[False] / median[True]:.2f}x" if joint
                        else " | ")
                print(f"| {prompts}x{n} | {row} | {'joint' if joint else 'two products'} | {best[joint]:.3f} | "
                      f"{median[joint]:.3f} | {gain} |", flush=True)
    finally:
        projections.JOIN_KEYS_VALUES = True
    print(f"\nload at the end: {host_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
