"""How scoring cost grows with the work: time, tokens and peak memory as the candidates per prompt (n) and the
prompt length grow, for every way of scoring a group, each against the unique-token floor (each distinct prompt
once plus each candidate once) and against one sequence per forward (the reference pipelines).

  pointwise   a Bradley-Terry RM, ``rm.score`` on one prompt's n candidates; one-per-forward timed where it is
              affordable (its tokens are always counted: ``tokens_requested``)
  pair-PM     ranking n candidates: ``rank_many`` with the tournament (2n-3 comparisons, both orders) and the
              round robin (all n(n-1)/2 pairs, both orders), against the RLHFlow reference: all n(n-1) ordered
              pairs, each in its own forward (timed up to n = 8; its tokens counted at every n)
  GPM         the GPO score: n forwards (one per candidate, the prompt shared), then n x n products
  memory      peak resident memory of ``rm.score`` above the loaded model, as n, the prompt length and the token
              budget grow: each point in a fresh process (its peak RSS less its RSS after loading), since freed
              memory stays in the allocator and would hide the next point's peak

Every model is a benchmark-sized random Llama in its family's real layout (``common.build_bench_checkpoint``),
float32 on CPU. Plots (PNG, matplotlib: ``pip install rmplugins[bench]``) go to ``--plots`` (default
``benchmarks/plots``); the tables are printed as markdown.

    python benchmarks/bench_curves.py            # CPU: about 8 minutes on 2 cores
    python benchmarks/bench_curves.py --quick    # smaller sweeps, about 2 minutes
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import _words, build_bench_checkpoint, host_load  # noqa: E402

from rmplugins import load_reward_model  # noqa: E402
from rmplugins.inputs import to_conversation  # noqa: E402

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- data and measuring
def group(rm, prompt_tokens: int, n: int, seed: int, response_words=(40, 160)) -> tuple[str, list[str]]:
    """One prompt of about ``prompt_tokens`` tokens (as ``rm``'s tokenizer counts them) and n candidates."""
    rng = random.Random(seed)
    words = max(8, prompt_tokens)
    prompt = _words(rng, words)
    ids = rm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    while len(ids) > prompt_tokens and words > 8:  # trim to the target length
        words = int(words * prompt_tokens / len(ids) * 0.98)
        prompt = _words(random.Random(seed), words)
        ids = rm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt, [_words(rng, rng.randint(*response_words)) for _ in range(n)]


def measure(rm, fn) -> dict:
    """Wall time and the engine's token counts of ``fn()``."""
    rm.engine.stats.reset()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    st = rm.engine.stats
    return {"seconds": seconds, "processed": st.tokens_processed, "requested": st.tokens_requested,
            "floor": st.tokens_floor, "calls": st.calls}


def status_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(model: str, n: int, prompt_tokens: int, budget: int | None) -> dict:
    """(In a fresh process.) Peak RSS of one ``rm.score`` of n candidates above the RSS after loading and warm-up."""
    rm = load_reward_model(model, device="cpu")
    rm.engine.token_budget = budget
    prompt, cands = group(rm, prompt_tokens, n, seed=n + prompt_tokens)
    rm.score(["Hello."], ["Hi."])
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts here: loading's own peak is not counted
    loaded = status_mib("VmRSS")
    start = time.perf_counter()
    rm.score([prompt] * n, cands)
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    return {"n": n, "prompt_tokens": prompt_tokens, "budget": rm.engine.budget(), "seconds": seconds,
            "mib": peak - loaded, "loaded_mib": loaded}


def memory_sweep(model: Path, points: list[tuple[int, int, int | None]]) -> list[dict]:
    rows = []
    for n, length, budget in points:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", str(model), str(n), str(length),
                              str(budget or 0)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"memory n={n:<4} L={length:<5} budget {row['budget']:<6}: +{row['mib']:.0f} MiB above the loaded "
              f"model ({row['loaded_mib']:.0f} MiB), {row['seconds']:.2f}s", flush=True)
    return rows


def one_per_forward(rm, prompt, candidates) -> float:
    """The reference pipelines' way: each candidate's sequence alone (no prefix sharing, no batching)."""
    start = time.perf_counter()
    for c in candidates:
        rm.engine.hidden_at([rm.encode_row(to_conversation(prompt, c))], [[-1]], prefix_reuse=False)
    return time.perf_counter() - start


def all_ordered_pairs_one_per_forward(pm, prompt, candidates) -> float:
    """The RLHFlow reference: every ordered pair (a in position A, b in B) in its own forward."""
    context = pm.context_text(to_conversation(prompt, candidates[0]).context)
    start = time.perf_counter()
    for i, a in enumerate(candidates):
        for j, b in enumerate(candidates):
            if i != j:
                pm.engine.hidden_at([pm.encode(context, a, b)], [[-1]], prefix_reuse=False)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- sweeps
def pointwise_point(rm, n: int, prompt_tokens: int, seed: int, naive_limit: int) -> dict:
    """One pointwise measurement: ``rm.score`` of n candidates, and one sequence per forward when affordable."""
    prompt, cands = group(rm, prompt_tokens, n, seed=seed)
    row = measure(rm, lambda: rm.score([prompt] * n, cands))
    row.update(n=n, prompt_tokens=prompt_tokens,
               naive_s=one_per_forward(rm, prompt, cands) if row["requested"] <= naive_limit else None)
    print(f"pointwise n={n:<3} L={prompt_tokens:<5}: {row['seconds']:.2f}s (one-per-forward {fmt(row['naive_s'])}s), "
          f"processed {row['processed']} / floor {row['floor']} / requested {row['requested']}", flush=True)
    return row


def pointwise_sweep(rm, ns, prompt_tokens, lengths, n_fixed, naive_limit) -> tuple[list[dict], list[dict]]:
    rm.score(["Hello."], ["Hi."])  # warm-up
    by_n = [pointwise_point(rm, n, prompt_tokens, n, naive_limit) for n in ns]
    by_len = [pointwise_point(rm, n_fixed, length, length, naive_limit) for length in lengths]
    return by_n, by_len


def pair_pm_sweep(pm, ns, prompt_tokens, reference_limit) -> list[dict]:
    rows = []
    for n in ns:
        prompt, cands = group(pm, prompt_tokens, n, seed=100 + n, response_words=(30, 100))
        for method in ("tournament", "round_robin"):
            row = measure(pm, lambda m=method: pm.rank_many([prompt], [cands], m))
            row.update(n=n, method=method)
            rows.append(row)
            print(f"pair-PM n={n:<3} {method:<12}: {row['seconds']:.2f}s, processed {row['processed']} in "
                  f"{row['calls']} calls", flush=True)
        # The reference judges every ordered pair in its own forward: the round robin's sequences, each whole.
        ref_tokens = rows[-1]["requested"]
        seconds = all_ordered_pairs_one_per_forward(pm, prompt, cands) if n * (n - 1) <= reference_limit else None
        rows.append({"n": n, "method": "all ordered pairs, one per forward", "seconds": seconds,
                     "processed": ref_tokens, "requested": ref_tokens, "floor": None, "calls": n * (n - 1)})
        print(f"pair-PM n={n:<3} all ordered pairs, one per forward: {fmt(seconds)}s, {ref_tokens} tokens",
              flush=True)
    return rows


def gpm_sweep(gpm, ns, prompt_tokens) -> list[dict]:
    rows = []
    for n in ns:
        prompt, cands = group(gpm, prompt_tokens, n, seed=200 + n)
        row = measure(gpm, lambda: gpm.rank_many([prompt], [cands]))
        row.update(n=n)
        rows.append(row)
        print(f"GPM n={n:<3}: {row['seconds']:.2f}s, processed {row['processed']} / floor {row['floor']} / "
              f"requested {row['requested']}", flush=True)
    return rows


# ----------------------------------------------------------------------------- output
def md(rows, cols) -> str:
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(out)


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def plot(path: Path, results: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path.mkdir(parents=True, exist_ok=True)
    saved = []

    def finish(fig, name):
        for ax in fig.axes:  # every x axis here doubles from point to point: powers of two, plain numbers
            if ax.get_xlabel():
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        fig.tight_layout()
        fig.savefig(path / name, dpi=110)
        plt.close(fig)
        saved.append(path / name)

    for key, xkey, xlabel, name in (("by_n", "n", "candidates per prompt (n)", "pointwise_by_n.png"),
                                    ("by_len", "prompt_tokens", "prompt tokens (n = 8)", "pointwise_by_prompt.png")):
        rows = results[key]
        x = [r[xkey] for r in rows]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.plot(x, [r["requested"] for r in rows], "o-", label="one sequence per forward")
        a.plot(x, [r["processed"] for r in rows], "s-", label="rmplugins, processed")
        a.plot(x, [r["floor"] for r in rows], "k--", label="unique-token floor")
        a.set(yscale="log", xlabel=xlabel, ylabel="tokens", title="Pointwise: tokens")
        a.legend()
        naive = [(r[xkey], r["naive_s"]) for r in rows if r["naive_s"]]
        b.plot(x, [r["seconds"] for r in rows], "s-", label="rmplugins rm.score")
        if naive:
            b.plot(*zip(*naive), "o-", label="one sequence per forward")
        b.set(yscale="log", xlabel=xlabel, ylabel="seconds (CPU, 2 threads)", title="Pointwise: time")
        b.legend()
        finish(fig, name)

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for method, style in (("tournament", "s-"), ("round_robin", "o-"), ("all ordered pairs, one per forward", "^-")):
        rows = [r for r in results["pair_pm"] if r["method"] == method]
        a.plot([r["n"] for r in rows], [r["processed"] for r in rows], style, label=method)
        timed_rows = [r for r in rows if r["seconds"] is not None]
        b.plot([r["n"] for r in timed_rows], [r["seconds"] for r in timed_rows], style, label=method)
    a.set(yscale="log", xlabel="candidates (n)", ylabel="tokens processed",
          title="Pair-PM ranking: tokens")
    b.set(yscale="log", xlabel="candidates (n)", ylabel="seconds", title="Pair-PM ranking: time")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    finish(fig, "pair_pm_by_n.png")

    fig, a = plt.subplots(1, 1, figsize=(5, 4))
    rows = results["gpm"]
    a.plot([r["n"] for r in rows], [r["requested"] for r in rows], "o-", label="one sequence per forward")
    a.plot([r["n"] for r in rows], [r["processed"] for r in rows], "s-", label="rmplugins, processed")
    a.plot([r["n"] for r in rows], [r["floor"] for r in rows], "k--", label="unique-token floor")
    a.set(yscale="log", xlabel="candidates (n)", ylabel="tokens", title="GPM ranking: tokens")
    a.legend()
    finish(fig, "gpm_by_n.png")

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    mem = results["memory"]
    default = max(r["budget"] for r in mem if r["n"] == 8)  # the automatic budget
    for ax, key, label, pick in (
            (axes[0], "n", "candidates (n), prompt 2048 tokens", lambda r: r["prompt_tokens"] == 2048
             and r["budget"] == default),
            (axes[1], "prompt_tokens", "prompt tokens (n = 32)", lambda r: r["n"] == 32 and r["budget"] == default),
            (axes[2], "budget", "token budget (n = 128, prompt 2048)", lambda r: r["n"] == 128
             and r["prompt_tokens"] == 2048)):
        rows = sorted((r for r in mem if pick(r)), key=lambda r: r[key])
        ax.plot([r[key] for r in rows], [r["mib"] for r in rows], "s-", label="peak RSS above the loaded model")
        ax.set(xlabel=label, ylabel="MiB", title="Memory of rm.score")
        twin = ax.twinx()
        twin.plot([r[key] for r in rows], [r["seconds"] for r in rows], "o--", color="tab:red", label="seconds")
        twin.set_ylabel("seconds")
        ax.legend(loc="upper left", fontsize=7)
        twin.legend(loc="lower right", fontsize=7)
    finish(fig, "memory.png")
    return saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                         str(Path(tempfile.gettempdir()) / "rmplugins-bench")),
                   help="where the benchmark checkpoints are built and kept (env RMPLUGINS_BENCH_DIR)")
    p.add_argument("--plots", default=str(HERE / "plots"), help="where the PNG plots go")
    p.add_argument("--quick", action="store_true", help="smaller sweeps (a check, not the figures)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    p.add_argument("--memory-probe", nargs=4, metavar=("MODEL", "N", "PROMPT_TOKENS", "BUDGET"),
                   help=argparse.SUPPRESS)  # one point of the memory sweep, run in a fresh process
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        model, n, length, budget = args.memory_probe
        print(json.dumps(memory_probe(model, int(n), int(length), int(budget) or None)))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache = Path(args.cache_dir)
    quick = args.quick
    ns = [2, 4, 8, 16] if quick else [2, 4, 8, 16, 32, 64]
    lengths = [128, 512, 1024] if quick else [128, 256, 512, 1024, 2048, 4096]
    pm_ns = [2, 4, 8] if quick else [2, 4, 8, 16, 32]
    print(f"# rmplugins cost curves, {datetime.date.today()}, torch {torch.__version__}, {args.threads} CPU threads, "
          f"{host_load()}")

    bt = load_reward_model(build_bench_checkpoint("bt", cache / "bench-bt"), device="cpu")
    cfg = bt.model.config
    print(f"models: random Llama, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, float32; "
          f"token budget {bt.engine.budget()}\n")
    results = {}
    results["by_n"], results["by_len"] = pointwise_sweep(bt, ns, 1024, lengths, 8, naive_limit=60_000)
    bt_path = build_bench_checkpoint("bt", cache / "bench-bt")
    points = [(n, 2048, None) for n in ((8, 32) if quick else (8, 32, 128))]
    points += [(32, length, None) for length in ((512, 4096) if quick else (512, 1024, 4096))]
    points += [(128, 2048, budget) for budget in ((512, 16384) if quick else (512, 1024, 2048, 8192, 16384))]
    results["memory"] = memory_sweep(bt_path, points)
    del bt
    gc.collect()
    pm = load_reward_model(build_bench_checkpoint("pair_pm", cache / "bench-pair-pm"), kind="pair_pm",
                           device="cpu")
    results["pair_pm"] = pair_pm_sweep(pm, pm_ns, 512, reference_limit=56)
    del pm
    gc.collect()
    gpm = load_reward_model(build_bench_checkpoint("gpm", cache / "bench-gpm"), kind="gpm", device="cpu")
    results["gpm"] = gpm_sweep(gpm, ns, 1024)

    print("\n## Pointwise, one prompt of ~1024 tokens, n candidates\n")
    cols = [("n", lambda r: str(r["n"])), ("seconds", lambda r: fmt(r["seconds"])),
            ("one-per-forward s", lambda r: fmt(r["naive_s"])),
            ("speed-up", lambda r: fmt(r["naive_s"] / r["seconds"] if r["naive_s"] else None)),
            ("processed", lambda r: str(r["processed"])), ("floor", lambda r: str(r["floor"])),
            ("processed / floor", lambda r: fmt(r["processed"] / r["floor"], ".3f")),
            ("requested / processed", lambda r: fmt(r["requested"] / r["processed"]))]
    print(md(results["by_n"], cols))
    print("\n## Pointwise, n = 8, prompt length\n")
    print(md(results["by_len"], [("prompt tokens", lambda r: str(r["prompt_tokens"]))] + cols[1:]))
    print("\n## Pair-PM ranking of n candidates (prompt ~512 tokens)\n")
    print(md(results["pair_pm"], [("n", lambda r: str(r["n"])), ("method", lambda r: r["method"]),
                                  ("seconds", lambda r: fmt(r["seconds"])), ("engine calls", lambda r: str(r["calls"])),
                                  ("processed", lambda r: str(r["processed"])),
                                  ("one pair per forward", lambda r: str(r["requested"])),
                                  ("requested / processed", lambda r: fmt(r["requested"] / r["processed"]))]))
    print("\n## GPM ranking (GPO scores) of n candidates (prompt ~1024 tokens)\n")
    print(md(results["gpm"], [("n", lambda r: str(r["n"])), ("seconds", lambda r: fmt(r["seconds"])),
                              ("processed", lambda r: str(r["processed"])), ("floor", lambda r: str(r["floor"])),
                              ("processed / floor", lambda r: fmt(r["processed"] / r["floor"], ".3f")),
                              ("requested / processed", lambda r: fmt(r["requested"] / r["processed"]))]))
    print("\n## Memory of rm.score (Bradley-Terry): peak RSS above the loaded model, each point in a fresh process\n")
    print(md(results["memory"], [("n", lambda r: str(r["n"])), ("prompt tokens", lambda r: str(r["prompt_tokens"])),
                                 ("token budget", lambda r: str(r["budget"])),
                                 ("seconds", lambda r: fmt(r["seconds"])),
                                 ("peak MiB above the model", lambda r: fmt(r["mib"], ".0f")),
                                 ("model MiB", lambda r: fmt(r["loaded_mib"], ".0f"))]))
    try:
        saved = plot(Path(args.plots), results)
        print("\nplots: " + ", ".join(str(s.relative_to(HERE.parent)) if s.is_relative_to(HERE.parent) else str(s)
                                      for s in saved))
    except ImportError:
        print("\nno plots: matplotlib is not installed (pip install 'rmplugins[bench]')")
    print(f"after: {host_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
