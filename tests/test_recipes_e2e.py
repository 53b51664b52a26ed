"""End to end on the tiny checkpoints: both recipes through the CLI, every pair rule, resume after SIGKILL."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rmplugins.recipes.config import RecipeConfig
from rmplugins.recipes.files import read_jsonl
from rmplugins.recipes.loop import Recipe
from rmplugins.recipes.prompts import as_messages

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    {"prompt": "Tell me something nice."},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather?"}]},
    {"prompt": "Write a poem about books."},
]
TRAIN = ["--max-new-tokens", "6", "--batch-size", "2", "--epochs", "1", "--max-length", "96", "--no-progress",
         "--learning-rate", "1e-4"]


def _write_prompts(directory: Path) -> str:
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return str(path)


@pytest.fixture
def prompts_file(tmp_path):
    return _write_prompts(tmp_path)


def _tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every output file except the ones that record wall time (markers, summary, log) and the lock
    (it names the process holding the directory)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith((".done.json", ".log")) and p.name not in ("summary.json", ".lock"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cli(args, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "rmplugins", *args], env=env, capture_output=True, text=True,
                          check=False, timeout=timeout, cwd=str(ROOT))


@pytest.fixture(scope="module")
def dpo_run(tiny, tmp_path_factory):
    """One uninterrupted iterative-DPO run, 2 iterations of 3 candidates, its generation in chunks of 2 prompts:
    checked (and run again) below, and the reference of the resume test (one CLI run fewer)."""
    root = tmp_path_factory.mktemp("dpo-runs")
    common = ["--policy", tiny("policy"), "--reward-model", tiny("bt_llama3"), "--prompts", _write_prompts(root),
              "--iterations", "2", "--num-candidates", "3", "--chunk-size", "2", "--openrlhf-keys", *TRAIN]
    out = root / "uninterrupted"
    res = _cli(["iterative-dpo", "--output", str(out), *common])
    assert res.returncode == 0, res.stderr[-3000:]
    return common, out, res


def test_iterative_dpo_end_to_end_then_rerun_changes_nothing(dpo_run, tiny):
    common, out, res = dpo_run
    args = ["iterative-dpo", "--output", str(out), *common]
    assert "mean reward" in res.stdout and "after iter 1" in res.stdout
    for k in (1, 2):
        d = out / f"iter-{k}"
        rows = read_jsonl(d / "pairs.jsonl")
        assert rows, "every prompt has distinct candidates, so pairs are kept"
        for row in rows:
            assert list(row) == ["prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin"]
            # the prompts mix strings and messages: TRL's conversational format for every row
            assert isinstance(row["prompt"], list) and row["prompt"][-1]["role"] == "user"
            assert row["chosen"][0]["role"] == "assistant" and len(row["chosen"]) == 1
            assert row["chosen_score"] > row["rejected_score"]
            assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
        cands = read_jsonl(d / "candidates.jsonl")
        scores = read_jsonl(d / "scores.jsonl")
        assert [len(c["candidates"]) for c in cands] == [3, 3, 3]
        for c, s, row in zip(cands, scores, rows):
            assert row["chosen"][0]["content"] == c["candidates"][s["scores"].index(max(s["scores"]))]
        orl = read_jsonl(d / "pairs.openrlhf.jsonl")
        assert list(orl[0]) == ["prompt", "chosen", "chosen_reward", "rejected", "rejected_reward"]
        assert orl[0]["prompt"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
        assert orl[0]["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert (d / "model" / "model.safetensors").exists() and (d / "model" / "tokenizer.json").exists()
    gen2 = json.loads((out / "iter-2" / "generate.done.json").read_text())
    assert gen2["policy"] == str(out / "iter-1" / "model")  # iteration k samples from the policy of k-1
    train2 = json.loads((out / "iter-2" / "train.done.json").read_text())
    assert train2["trained"] and train2["reference"] == tiny("policy")  # reference = the initial policy
    summary = json.loads((out / "summary.json").read_text())
    assert [it["selection"]["kept"] for it in summary["iterations"]] == [len(read_jsonl(out / f"iter-{k}" /
                                                                                        "pairs.jsonl"))
                                                                        for k in (1, 2)]
    assert set(summary["iterations"][0]["seconds"]) == {"generate", "score", "select", "train"}
    assert "iteration 2: candidate reward mean" in (out / "recipe.log").read_text()

    before = _tree_hashes(out)
    markers = {p: p.read_bytes() for p in out.rglob("*.done.json")}
    res = _cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming the run" in res.stderr
    assert _tree_hashes(out) == before
    assert {p: p.read_bytes() for p in out.rglob("*.done.json")} == markers


def test_rejection_sampling_with_a_pairwise_model(tiny, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Tell me something nice."}\n{"prompt": "Name a city."}\n')
    out = tmp_path / "rs"
    res = _cli(["rejection-sampling", "--policy", tiny("policy"), "--reward-model", tiny("pairrm"), "--prompts",
                str(prompts), "--output", str(out), "--iterations", "1", "--num-candidates", "3", "--openrlhf-keys",
                *TRAIN])
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_jsonl(out / "iter-1" / "best.jsonl")
    cands = read_jsonl(out / "iter-1" / "candidates.jsonl")
    scores = read_jsonl(out / "iter-1" / "scores.jsonl")
    assert [list(r) for r in rows] == [["prompt", "completion", "score"]] * 2
    for r, c, s in zip(rows, cands, scores):
        assert isinstance(r["prompt"], str) and isinstance(r["completion"], str)  # standard format
        assert s["method"] == "tournament" and s["comparisons"] <= 2 * 3 - 3
        assert r["completion"] == c["candidates"][s["best"]] and r["score"] == s["scores"][s["best"]]
    assert list(read_jsonl(out / "iter-1" / "best.openrlhf.jsonl")[0]) == ["input", "output", "reward"]
    train = json.loads((out / "iter-1" / "train.done.json").read_text())
    assert train["trained"] and train["steps"] == 1 and train["reference"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"][0]["selection"]["rule"] == "best-of-n"


@pytest.mark.parametrize("kind, rule, method", [("pair_pm", "tournament", "tournament"),
                                                ("pairrm", "round-robin", "round_robin"),
                                                ("gpm", "gpo", "gpo"), ("armorm", "margin", "score"),
                                                ("prm", "max-min", "score")])
def test_pair_rules_per_kind(tiny, prompts_file, tmp_path, kind, rule, method):
    """Generate -> score -> select for each kind and rule (training is covered above)."""
    cfg = RecipeConfig(recipe="iterative-dpo", policy=tiny("policy"), reward_model=tiny(kind), prompts=prompts_file,
                       output=str(tmp_path / kind), num_candidates=4, max_new_tokens=5, pair_rule=rule,
                       min_margin=0.05 if rule == "margin" else 0.0, show_progress=False)
    recipe = Recipe(cfg)
    recipe.preflight()  # what run() does first: the reward model's kind, from its files
    d = tmp_path / kind / "iter-1"
    d.mkdir(parents=True)
    recipe.stage_generate(d, cfg.policy, 1)
    score_info = recipe.stage_score(d)
    sel = recipe.stage_select(d)
    scores = read_jsonl(d / "scores.jsonl")
    rows = read_jsonl(d / "pairs.jsonl")
    assert score_info["reward_kind"] == kind and sel["rule"] == rule
    assert {s["method"] for s in scores} == {method}
    assert sel["kept"] + sel["ties"] + sel["below_margin"] + sel["degenerate"] == sel["groups"] == 3
    assert sel["kept"] == len(rows) >= 1
    n = 4
    expected_comparisons = {"tournament": 2 * n - 3, "round_robin": n * (n - 1) // 2, "gpo": 0, "score": 0}
    if kind in ("pair_pm", "pairrm"):
        assert all(0 < s["comparisons"] <= expected_comparisons[method] for s in scores)
    by_prompt = {json.dumps(row["prompt"]): row for row in rows}
    for c, s in zip(read_jsonl(d / "candidates.jsonl"), scores):
        row = by_prompt.get(json.dumps(as_messages(c["prompt"])))
        if row is None:
            continue
        assert row["chosen"] == [{"role": "assistant", "content": c["candidates"][s["best"]]}]
        assert row["rejected"] == [{"role": "assistant", "content": c["candidates"][s["worst"]]}]
        assert row["chosen_score"] == s["scores"][s["best"]] and row["rejected_score"] == s["scores"][s["worst"]]
        assert row["margin"] > (0.05 if rule == "margin" else 0.0)


def test_resume_after_sigkill_is_byte_identical(dpo_run, tmp_path):
    common, ref, _ = dpo_run
    out = tmp_path / "killed"
    args = ["iterative-dpo", "--output", str(out), *common]
    # 1. killed inside iteration 1's generation, after its first chunk of 2 prompts
    res = _cli(args, {"RMPLUGINS_RECIPES_KILL_AFTER": "iter-1/generate/chunk-1"})
    assert res.returncode == -signal.SIGKILL
    partial = out / "iter-1" / "candidates.jsonl.partial"
    assert not (out / "iter-1" / "candidates.jsonl").exists()
    assert [r["index"] for r in read_jsonl(partial)] == [0, 1]
    # 2. resumed, then killed mid iteration 2 (after its scores, before pairs and training)
    res = _cli(args, {"RMPLUGINS_RECIPES_KILL_AFTER": "iter-2/score"})
    assert res.returncode == -signal.SIGKILL
    assert "resuming generation after 2 finished prompts" in res.stderr
    assert (out / "iter-1" / "model").is_dir() and not (out / "iter-2" / "pairs.jsonl").exists()
    finished = _tree_hashes(out)
    # 3. resumed to the end
    res = _cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    final = _tree_hashes(out)
    assert {k: final[k] for k in finished} == finished, "finished files were rewritten"
    reference = _tree_hashes(ref)
    assert reference.keys() == final.keys()
    assert {k for k in reference if reference[k] != final[k]} == set(), "resumed run differs from uninterrupted"
    summary = json.loads((out / "summary.json").read_text())
    assert [it["selection"]["kept"] for it in summary["iterations"]] == [
        it["selection"]["kept"] for it in json.loads((ref / "summary.json").read_text())["iterations"]]
