"""``rmplugins demo``: the whole loop on the tiny demo models shows the policy improving.

The demo models are built once into the same cache ``make demo`` uses (~/.cache/rmplugins/tiny, about a minute
on first use), so this test is cheap afterwards.
"""

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
CACHE = str(Path.home() / ".cache" / "rmplugins" / "tiny")


def test_demo_reward_model_learned_the_synthetic_preference():
    import rmplugins
    from rmplugins.recipes.demo_loop import demo_models

    _, rm_path = demo_models(CACHE)
    rm = rmplugins.load_reward_model(rm_path)
    texts = ["hate no cannot not hate no", "good no hate not cannot no", "good love no thanks not hate",
             "good love thanks lovely no hate", "good love thanks lovely helpful honest"]
    scores = rm.score(["Tell me about books."] * len(texts), texts)
    assert scores == sorted(scores), scores  # more warm words, higher reward
    assert scores[-1] - scores[0] > 5


def test_demo_loop_improves_the_policy(tmp_path, capsys):
    from rmplugins.recipes.demo_loop import run_demo_loop, warm_fraction

    summary = run_demo_loop(str(tmp_path / "demo"), show_progress=False, tiny_dir=CACHE)
    means = [it["reward_mean"] for it in summary["iterations"]] + [summary["final_eval"]["reward_mean"]]
    assert len(means) == 3 and means[0] < means[1] < means[2], means
    assert means[2] - means[0] > 1.0
    table = capsys.readouterr().out
    assert "after iter 2" in table and f"{means[2]:.4f}" in table
    # the README shows what `make demo` prints: the same rows, digit for digit
    from rmplugins.recipes.cli import format_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    capability = torch.backends.cpu.get_cpu_capability()  # the tiny models are drawn and trained by these kernels
    label = {"AVX512": "on a CPU with AVX-512:", "AVX2": "on a CPU with AVX2 and no AVX-512"}.get(capability)
    if label is not None:  # the README's table for this CPU, introduced as that CPU's (others: the rise alone)
        at = readme.find(format_table(summary))
        assert at > 0, f"README has no table for {capability}:\n{format_table(summary)}"
        introduction = readme[:at].rsplit("```", 2)[-2].replace("\n", " ")  # the prose before its code block
        assert label in introduction, (capability, introduction)
    # the improvement is the behaviour the reward prefers: more warm words in the final policy's samples
    def warmth(path):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        texts = [t for r in rows for t in r["candidates"]]
        return sum(map(warm_fraction, texts)) / len(texts)

    assert warmth(tmp_path / "demo" / "eval-2" / "candidates.jsonl") > \
        warmth(tmp_path / "demo" / "iter-1" / "candidates.jsonl") + 0.1


@pytest.mark.parametrize("example,table", [("iterative_dpo", "pairs kept"), ("rejection_sampling", "best kept")])
def test_recipe_examples_run_with_tiny(tmp_path, example, table):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RMPLUGINS_TINY_DIR": CACHE, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(root / "examples" / f"{example}.py"), "--tiny", "--output",
                          str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert table in res.stdout and "after iter 1" in res.stdout


# The TRL examples the docs point to (docs/trl.md), run as a user would with --tiny: real trainers, the tiny
# checkpoints the tests build. What each prints last is what it exists to show.
@pytest.mark.parametrize("example,shows", [
    ("grpo_armorm", "/objective/"),                        # ArmoRM's per-objective means
    ("grpo_gpm_gpo", "rewards/"),                          # GPO rewards over each prompt's group
    ("online_dpo_pairpm", "win rate vs. the initial policy:"),
])
def test_trl_examples_run_with_tiny(tiny_root, tmp_path, example, shows):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RMPLUGINS_TINY_DIR": tiny_root, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(root / "examples" / f"{example}.py"), "--tiny", "--output-dir",
                          str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert shows in last, res.stdout[-2000:]
    assert "nan" not in last.lower(), last


def test_the_demo_family_table_shows_every_kind_and_its_rows_agree_with_themselves(tiny_root, capsys):
    """`rmplugins demo` first shows every family on its tiny checkpoint: every kind the registry has (a new family
    cannot be left out), judges included, each row's best/worst and comparison count as its method makes them."""
    from rmplugins.demo import CANDIDATES, family_table, print_family_table
    from rmplugins.registry import KINDS

    rows = family_table(tiny_root)
    assert {r["kind"] for r in rows} == set(KINDS)
    n = len(CANDIDATES)
    for r in rows:
        scores = r["scores"]
        assert len(scores) == n and r["best"] != r["worst"]
        if r["method"] != "tournament":  # a knockout's best and worst come from its brackets, not its mean scores
            assert r["best"] == scores.index(max(scores)) and r["worst"] == scores.index(min(scores)), r
        pairs = {"score": 0, "round_robin": n * (n - 1) // 2, "gpo": n * (n - 1) // 2}
        if r["method"] in pairs:
            assert r["comparisons"] == pairs[r["method"]], r
        else:  # a tournament: at most 2n - 3 matches
            assert r["method"] == "tournament" and 0 < r["comparisons"] <= 2 * n - 3, r
        assert all(0.0 <= p <= 1.0 for p in r["p_vs_first"]), r  # P(candidate beats the first)
        if r["kind"] in ("prm", "genrm", "pair_pm", "pairrm"):
            assert all(0.0 <= s <= 1.0 for s in scores), r  # probabilities: a step's, P(yes), mean win rates
    methods = {r["family"]: r["method"] for r in rows}
    assert methods["judge pointwise"] == "score" and methods["judge pairwise"] == "round_robin"
    assert methods["pair_pm"] == "tournament" and methods["gpm"] == "gpo"
    print_family_table(rows)
    out = capsys.readouterr().out
    assert all(f"\n{r['family']:<17}{r['kind']:<9}" in out for r in rows)
