"""Pair/selection rules, prompt-file errors and resume bookkeeping of the recipes (no models)."""

import json

import pytest

from rmplugins.recipes.config import RecipeConfig
from rmplugins.recipes.files import PartialFile
from rmplugins.recipes.generation import seed_for
from rmplugins.recipes.loop import Recipe
from rmplugins.recipes.prompts import PromptFileError, read_prompts
from rmplugins.recipes.selection import SelectionStats, best_of_n, check_rule, default_rule, select_pair


# ----------------------------------------------------------------------------- rules
def test_max_min_picks_argmax_argmin_and_stores_margin():
    stats = SelectionStats()
    pair = select_pair(["a", "b", "c", "d"], [0.5, 2.0, -1.25, 0.0], 0, 0, rule="max-min", stats=stats)
    assert (pair.chosen, pair.rejected) == (1, 2)
    assert (pair.chosen_score, pair.rejected_score, pair.margin) == (2.0, -1.25, 3.25)
    assert stats.as_dict() == {"groups": 1, "kept": 1, "ties": 0, "below_margin": 0, "degenerate": 0,
                               "comparisons": 0}


def test_exact_ties_and_degenerate_groups_are_dropped_and_counted():
    stats = SelectionStats()
    assert select_pair(["a", "b", "c"], [1.5, 1.5, 1.5], 0, 0, rule="max-min", stats=stats) is None
    assert select_pair(["same", "same"], [0.1, 0.1], 0, 1, rule="max-min", stats=stats) is None
    assert select_pair(["only"], [3.0], 0, 0, rule="max-min", stats=stats) is None
    # a tie at the top does not matter when min differs: first argmax, first argmin
    pair = select_pair(["a", "b", "c"], [2.0, 2.0, 1.0], 0, 0, rule="max-min", stats=stats)
    assert (pair.chosen, pair.rejected, pair.margin) == (0, 2, 1.0)
    assert (stats.groups, stats.kept, stats.ties, stats.degenerate) == (4, 1, 1, 2)


def test_margin_rule_drops_small_margins():
    stats = SelectionStats()
    assert select_pair(["a", "b"], [0.3, 0.1], 0, 1, rule="margin", min_margin=0.5, stats=stats) is None
    pair = select_pair(["a", "b"], [1.3, 0.1], 0, 1, rule="margin", min_margin=0.5, stats=stats)
    assert pair.margin == pytest.approx(1.2)
    assert (stats.kept, stats.below_margin) == (1, 1)


def test_tournament_rule_uses_the_ranking_best_and_worst():
    # the knockout's winner need not have the highest mean win probability: the rule follows the ranking
    scores = [0.55, 0.9, 0.2, 0.6]
    pair = select_pair(["a", "b", "c", "d"], scores, 3, 2, rule="tournament")
    assert (pair.chosen, pair.rejected) == (3, 2)
    assert pair.margin == pytest.approx(0.4)
    stats = SelectionStats()
    assert select_pair(["a", "b"], [0.5, 0.5], 0, 1, rule="tournament", stats=stats) is None  # coin flips
    assert stats.ties == 1


def test_gpo_rule_is_argmax_argmin_of_gpo_scores():
    pair = select_pair(["a", "b", "c"], [-3.0, 4.5, -1.5], 2, 2, rule="gpo")
    assert (pair.chosen, pair.rejected, pair.margin) == (1, 0, 7.5)


def test_best_of_n_keeps_ties_but_counts_them():
    stats = SelectionStats()
    assert best_of_n(["a", "b", "c"], [0.1, 0.7, 0.3], stats=stats) == 1
    assert best_of_n(["a", "b"], [1.0, 1.0], stats=stats) == 0
    assert best_of_n([], [], stats=stats) is None
    assert (stats.groups, stats.kept, stats.ties, stats.degenerate) == (3, 2, 1, 1)


def test_rules_are_checked_against_the_model_kind():
    assert [default_rule(k) for k in ("bt", "armorm", "pair_pm", "pairrm", "gpm")] == [
        "max-min", "max-min", "tournament", "tournament", "gpo"]
    check_rule("tournament", "pairrm")
    with pytest.raises(ValueError, match="does not apply to a 'bt' reward model.*--pair-rule max-min"):
        check_rule("tournament", "bt")
    with pytest.raises(ValueError, match="unknown pair rule"):
        check_rule("best-pair", "bt")


# ----------------------------------------------------------------------------- prompt files
def _write(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_prompt_file_reads_strings_and_messages_and_skips_blank_lines(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path = _write(tmp_path, [json.dumps({"prompt": "Hello"}), "", json.dumps({"prompt": msgs, "id": 7})])
    assert read_prompts(path) == ["Hello", msgs]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "ok"}', '{"prompt": "fine"', '{"prompt": "x"}'], r"prompts.jsonl:2: not valid JSON"),
    (['{"prompt": "ok"}', '', '{"question": "where is my prompt"}'],
     r"prompts.jsonl:3: missing the 'prompt' field \(fields present: \['question'\]\)"),
    (['["prompt", "x"]'], r"prompts.jsonl:1: expected a JSON object"),
    (['{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'],
     r"prompts.jsonl:1: invalid 'prompt': .*must end with a user turn"),
    (['{"prompt": ""}'], r"prompts.jsonl:1: the 'prompt' field is an empty string"),
    (['', '  '], r"holds no prompts"),
])
def test_bad_prompt_files_name_the_line(tmp_path, lines, message):
    with pytest.raises(PromptFileError, match=message):
        read_prompts(_write(tmp_path, lines))


def test_a_non_utf8_prompt_file_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "fine"}\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(PromptFileError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9"):
        read_prompts(path)
    path.write_bytes('\ufeff{"prompt": "with a byte-order mark"}\n'.encode("utf-8"))
    assert read_prompts(path) == ["with a byte-order mark"]


def test_cli_reports_a_bad_prompt_file_with_its_line_number(tmp_path, capsys):
    from rmplugins.cli import main

    bad = _write(tmp_path, ['{"prompt": "ok"}', '{prompt: "no quotes"}'])
    rc = main(["iterative-dpo", "--policy", str(tmp_path), "--reward-model", str(tmp_path), "--prompts", bad,
               "--output", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "prompts.jsonl:2: not valid JSON" in err
    assert not (tmp_path / "out").exists()


def test_missing_policy_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--policy '/nonexistent/policy' is not a directory"):
        RecipeConfig(recipe="iterative-dpo", policy="/nonexistent/policy", reward_model="org/rm",
                     prompts="p.jsonl", output=str(tmp_path))


def test_one_candidate_per_prompt_is_refused_by_both_recipes(tmp_path):
    """Rejection sampling accepted --num-candidates 1 and fine-tuned on every sample, none rejected."""
    common = {"policy": "org/policy", "reward_model": "org/rm", "prompts": "p.jsonl", "output": str(tmp_path),
              "num_candidates": 1}
    with pytest.raises(ValueError, match="rejection sampling keeps the best of --num-candidates; with 1"):
        RecipeConfig(recipe="rejection-sampling", **common)
    with pytest.raises(ValueError, match="iterative DPO needs --num-candidates of at least 2"):
        RecipeConfig(recipe="iterative-dpo", **common)


# ----------------------------------------------------------------------------- resume bookkeeping
def test_partial_file_drops_a_torn_last_line(tmp_path):
    final = tmp_path / "candidates.jsonl"
    part = PartialFile(final)
    part.append([{"index": 0}, {"index": 1}])
    with open(part.path, "a") as fh:
        fh.write('{"index": 2, "cand')  # killed mid-write
    again = PartialFile(final)
    assert again.rows == [{"index": 0}, {"index": 1}]
    assert part.path.read_text() == '{"index": 0}\n{"index": 1}\n'
    again.append([{"index": 2}])
    again.finish()
    assert final.read_text() == '{"index": 0}\n{"index": 1}\n{"index": 2}\n'
    assert not part.path.exists()


def test_resume_with_different_options_is_refused(tmp_path):
    prompts = _write(tmp_path, ['{"prompt": "hi"}'])
    cfg = {"recipe": "iterative-dpo", "policy": "org/policy", "reward_model": "org/rm", "prompts": prompts,
           "output": str(tmp_path / "run")}
    first = Recipe(RecipeConfig(**cfg))
    first.out.mkdir()
    first.check_run_file()
    assert not (first.out / "run.json").exists()  # nothing written yet: nothing to hold a re-run to
    Recipe(RecipeConfig(**cfg, num_candidates=8)).check_run_file()
    first.write_fingerprint()  # the first output of the run is about to be written
    Recipe(RecipeConfig(**cfg, iterations=5)).check_run_file()  # more iterations is a resume
    with pytest.raises(ValueError, match=r"different options \(num_candidates: 4 -> 8\)"):
        Recipe(RecipeConfig(**cfg, num_candidates=8)).check_run_file()


def test_seeds_depend_on_iteration_and_prompt_only():
    seeds = {seed_for(42, k, i) for k in range(1, 4) for i in range(100)}
    assert len(seeds) == 300
    assert seed_for(42, 2, 7) == seed_for(42, 2, 7) != seed_for(43, 2, 7)
