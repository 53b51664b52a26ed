"""``rmplugins demo``: the whole iterative-DPO loop on built-in tiny models, on CPU, offline.

First a table of every family on its tiny checkpoint, generative judges included (scores for the pointwise kinds,
mean win probabilities / GPO scores for the preference kinds, and each family's best and worst of the same
candidates). Then the loop:
a tiny policy, a tiny Bradley-Terry reward model trained on a synthetic preference (warm words beat cold ones),
2 iterations of generate -> score -> pairs -> TRL DPOTrainer, and a table of the mean reward of each policy's
samples (iteration 0 = the initial policy). See rmplugins/recipes/demo_loop.py for how the models are made.
"""

from __future__ import annotations

import argparse
import sys

PROMPT = [{"role": "user", "content": "What are some synonyms for the word beautiful?"}]
CANDIDATES = [
    "Gorgeous, lovely, stunning, pretty and elegant.",
    "Sorry, I cannot answer this.",
    "Beautiful means nice. Here is a list: gorgeous.",
    "",
]
# (row label, tiny checkpoint, load options): every kind of the registry; a generative judge with a pointwise and a
# pairwise preset, both read from the verdicts' logits (a generating judge would only write noise at this size)
FAMILIES = [("bt", "bt", {}), ("bt_llama3", "bt_llama3", {}), ("armorm", "armorm", {}), ("prm", "prm", {}),
            ("pair_pm", "pair_pm", {}), ("pairrm", "pairrm", {}), ("better_pairrm", "better_pairrm", {}),
            ("gpm", "gpm", {}),
            ("judge pointwise", "genrm_qwen3", {"kind": "genrm", "judge": "qwen3-reranker"}),
            ("judge pairwise", "genrm_qwen3", {"kind": "genrm", "judge": "mt-bench-logits"})]


def family_table(tiny_dir: str | None = None) -> list[dict]:
    from .loading import load_reward_model
    from .testing import tiny_checkpoint

    rows = []
    for label, name, options in FAMILIES:
        rm = load_reward_model(tiny_checkpoint(name, tiny_dir), device="cpu", **options)
        ranking = rm.rank(PROMPT, CANDIDATES)
        vs_first = rm.compare([PROMPT] * (len(CANDIDATES) - 1), CANDIDATES[1:], [CANDIDATES[0]] * 3)
        rows.append({"family": label, "kind": rm.kind, "method": ranking.method, "scores": ranking.scores,
                     "best": ranking.best, "worst": ranking.worst, "comparisons": ranking.comparisons,
                     "p_vs_first": vs_first})
    return rows


def print_family_table(rows: list[dict]) -> None:
    print(f"Prompt: {PROMPT[0]['content']!r}")
    for i, c in enumerate(CANDIDATES):
        print(f"  [{i}] {c!r}")
    print()
    head = f"{'family':<17}{'kind':<9}{'rank method':<13}" + "".join(f"{f'score[{i}]':>11}" for i in
                                                                      range(len(CANDIDATES)))
    print(head + f"{'best':>6}{'worst':>7}{'judged':>8}")
    print("-" * len(head + " " * 21))
    for r in rows:
        scores = "".join(f"{s:>11.4f}" for s in r["scores"])
        print(f"{r['family']:<17}{r['kind']:<9}{r['method']:<13}{scores}{r['best']:>6}{r['worst']:>7}"
              f"{r['comparisons']:>8}")
    print("\nscore: reward (bt, armorm; prm: its weakest step's), P(yes) (the pointwise judge, Qwen3-Reranker's "
          "prompt), mean win probability (pair_pm, pairrm tournament, the pairwise judge's round robin on MT-Bench's "
          "prompt), GPO score (gpm); judged = candidate pairs the model compared.\nThese tiny checkpoints have "
          "random weights: the table shows that every family loads and runs its reference arithmetic, not which "
          "answer is better (an untrained model may well rank the empty answer first). The loop below trains its "
          "own tiny reward model.")


def run(args: argparse.Namespace) -> int:
    from .recipes.demo_loop import check_output, quiet, run_demo_loop

    try:
        if args.output is not None:
            check_output(args.output)  # before anything slow, and before anything is written there
        quiet()
        if not args.no_families:
            print_family_table(family_table(args.tiny_dir))
            print()
        run_demo_loop(args.output, show_progress=False, tiny_dir=args.tiny_dir, iterations=args.iterations)
    except ValueError as err:
        print(f"rmplugins demo: {err}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> None:
    from .options import positive_int

    p = subparsers.add_parser("demo", help="run every family on built-in tiny models (CPU, offline)",
                              description=__doc__.replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny-dir", default=None, help="where the tiny checkpoints are built (default: "
                   "$RMPLUGINS_TINY_DIR or ~/.cache/rmplugins/tiny)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="run directory of the loop (default: a new temporary directory); re-use it to resume")
    p.add_argument("--iterations", type=positive_int, default=2, help="DPO iterations (default 2)")
    p.add_argument("--no-families", action="store_true", help="skip the table of every family")
    p.set_defaults(func=run, interrupted_hint="re-run with the same --output DIR to resume (without --output the "
                   "run's temporary directory is removed)")
