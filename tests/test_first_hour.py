"""A newcomer's first hour, as a careless user: every mistake answered in a few lines that name the option, the value
and what to do, before any slow work and with nothing left on disk; nothing silently wrong (a reward model trained
as the policy, a GPM prompt that cuts every response away, a group size that does not match the batch)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from served import sigint_as_a_terminal_delivers_it

import rmplugins
from rmplugins.checkpoints import check_policy
from rmplugins.cli import build_parser
from rmplugins.recipes.preflight import TRACKER_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [{"prompt": "Tell me something nice."}, {"prompt": "What is the weather?"}, {"prompt": "A poem?"}]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")


def _cli(*args, env=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rmplugins", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(ROOT), preexec_fn=sigint_as_a_terminal_delivers_it)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return str(path)


def _recipe(tiny, prompts_file, out, *extra, policy=None, recipe="rejection-sampling"):
    return [recipe, "--policy", policy or tiny("policy"), "--reward-model", tiny("bt_llama3"), "--prompts",
            prompts_file, "--output", str(out), "--iterations", "1", "--num-candidates", "2", "--max-new-tokens",
            "4", "--batch-size", "2", "--epochs", "1", "--max-length", "64", "--no-progress", *extra]


def _short_and_clean(res, *needles, lines=4):
    text = res.stderr
    assert res.returncode == 2, text[-2000:]
    assert "Traceback" not in text and len(text.strip().splitlines()) <= lines, text[-2000:]
    for needle in needles:
        assert needle in text, text[-2000:]


# ------------------------------------------------------------------------------------------- devices and options
@no_gpu
def test_a_cuda_device_on_a_machine_without_one_is_refused_before_any_work(tiny, prompts_file, tmp_path):
    out = tmp_path / "runs" / "cuda"
    for option in ("--device", "--rm-device"):
        res = _cli(*_recipe(tiny, prompts_file, out, option, "cuda"))
        _short_and_clean(res, f"{option} cuda: this machine has no CUDA GPU", f"use {option} cpu")
        assert not out.exists() and not out.parent.exists()  # no .lock, no recipe.log, no iter-1
    with pytest.raises(ValueError, match="device= cuda: this machine has no CUDA GPU"):
        rmplugins.load_reward_model(tiny("bt_llama3"), device="cuda")
    with pytest.raises(ValueError, match="device= cuda:0: this machine has no CUDA GPU"):
        rmplugins.RewardFunction(tiny("bt_llama3"), device="cuda:0")
    with pytest.raises(ValueError, match="'gpu' is not a device name"):
        rmplugins.load_reward_model(tiny("bt_llama3"), device="gpu")
    started = time.monotonic()
    res = _cli("serve", "--model", tiny("armorm"), "--device", "cuda:0", "--port", "0")
    _short_and_clean(res, "--device cuda:0: this machine has no CUDA GPU")
    assert "loading" not in res.stderr and time.monotonic() - started < 60  # refused before the model loads


def test_a_dtype_or_size_that_makes_no_sense_is_refused_before_any_work(tiny, tmp_path):
    import torch

    for dtype in ("int8", torch.int8, "float8_e4m3fn", "bfloat", "complex64"):
        with pytest.raises(ValueError, match="is not one a model runs in; use 'float32', 'bfloat16' or 'float16'"):
            rmplugins.load_reward_model(tmp_path / "not-there", dtype=dtype)  # the dtype is refused first
    with pytest.raises(ValueError, match="cannot find checkpoint .*not-there': no such directory"):
        rmplugins.load_reward_model(tmp_path / "not-there", dtype="bfloat16")
    partial = tmp_path / "copied-without-weights"  # a copy or download that left the weights out
    shutil.copytree(tiny("bt_llama3"), partial, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ValueError, match=r"has no \*.safetensors weights: the download or copy left them out"):
        rmplugins.load_reward_model(partial)
    rm = rmplugins.load_reward_model(tiny("bt_llama3"), dtype=torch.bfloat16)
    assert next(rm.model.parameters()).dtype == torch.bfloat16
    # sizes that make no sense: max_length=0 was read as the default, 2.5 as 2, -5 failed at the first score
    for option, bad in (("max_length", 0), ("max_length", -5), ("max_length", 2.5), ("token_budget", 0),
                        ("token_budget", "4096")):
        with pytest.raises(ValueError, match=f"{option} must be a whole number of at least 1, got {bad!r}"):
            rmplugins.load_reward_model(tmp_path / "not-there", **{option: bad})
    with pytest.raises(ValueError, match="deterministic must be True or False, got 'no'"):  # "no" was truthy
        rmplugins.load_reward_model(tmp_path / "not-there", deterministic="no")
    assert rmplugins.load_reward_model(tiny("bt_llama3"), max_length=8).max_length == 8
    res = _cli("serve", "--model", tiny("bt_llama3"), "--dtype", "int8", "--port", "0")
    _short_and_clean(res, "argument --dtype: invalid choice: 'int8'")
    assert "loading" not in res.stderr


def test_a_tracker_that_is_not_installed_or_unknown_is_refused(tiny, prompts_file, tmp_path):
    import importlib.util

    missing = next((name for name, package in sorted(TRACKER_PACKAGES.items())
                    if importlib.util.find_spec(package) is None), None)
    assert missing is not None, "every tracker is installed here; the check cannot be shown"
    out = tmp_path / "run"
    res = _cli(*_recipe(tiny, prompts_file, out, "--report-to", missing))
    _short_and_clean(res, f"--report-to {missing}: the {TRACKER_PACKAGES[missing]!r} package is not installed")
    res = _cli(*_recipe(tiny, prompts_file, out, "--report-to", "wandbb"))
    _short_and_clean(res, "--report-to wandbb: not a tracker transformers knows")
    assert not out.exists()


def test_the_server_without_its_extra_says_which_to_install(tiny, tmp_path):
    """``pip install rmplugins`` without ``[server]``: ``rmplugins serve`` and ``rmplugins.serving`` said
    ``ModuleNotFoundError: No module named 'fastapi'`` in a traceback. A package that fails to import, first on the
    path, stands for the missing one."""
    for name in ("fastapi", "uvicorn"):
        site = tmp_path / name
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", "
                                                 f"name={name!r})\n")
        env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
        res = _cli("serve", "--model", tiny("armorm"), "--port", "0", env=env)
        _short_and_clean(res, "rmplugins serve: the reward server needs rmplugins' 'server' extra: pip install "
                              f"'rmplugins[server]' ({name}: No module named '{name}')", lines=1)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "fastapi"), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", "from rmplugins.serving import create_app"], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=120)
    assert "rmplugins.serving.create_app needs rmplugins' 'server' extra: pip install 'rmplugins[server]'" \
        in res.stderr.splitlines()[-1], res.stderr[-2000:]


def test_an_output_that_is_a_file_and_a_bad_number_answer_in_two_lines(tiny, prompts_file, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("mine\n")
    res = _cli(*_recipe(tiny, prompts_file, file))
    _short_and_clean(res, f"--output {file} is a file, not a directory")
    assert file.read_text() == "mine\n"
    for recipe in ("iterative-dpo", "rejection-sampling"):
        res = _cli(*_recipe(tiny, prompts_file, tmp_path / "run", "--iterations", "0", recipe=recipe))
        _short_and_clean(res, "argument --iterations: 0 is not a positive integer", f"rmplugins {recipe} --help",
                         lines=2)
    res = _cli("demo", "--iterations", "0")
    _short_and_clean(res, "argument --iterations: 0 is not a positive integer", lines=2)


def test_the_demo_never_writes_into_another_run_or_a_users_folder(tmp_path):
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"recipe": "rejection-sampling", "prompts": "/data/prompts.jsonl"}))
    (other / "candidates.jsonl").write_text("{}\n")
    before = sorted(p.name for p in other.iterdir())
    res = _cli("demo", "--output", str(other), "--no-families")
    _short_and_clean(res, f"--output {other} holds another run (rejection-sampling on /data/prompts.jsonl)")
    assert sorted(p.name for p in other.iterdir()) == before  # no prompts.jsonl written into it
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    res = _cli("demo", "--output", str(folder), "--no-families")
    _short_and_clean(res, "holds other files and no demo run")
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    res = _cli("demo", "--output", str(folder / "notes.txt"))
    _short_and_clean(res, "is a file, not a directory")


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and action.help.strip(), f"rmplugins {name} {action.option_strings[0]} has no help"


# ------------------------------------------------------------------------------------------- the policy
def _without_lm_head(policy: str, dst: Path) -> str:
    shutil.copytree(policy, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("lm_head.")}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    return str(dst)


def test_a_reward_model_or_a_headless_model_as_the_policy_is_refused(tiny, prompts_file, tmp_path):
    assert check_policy(tiny("policy")) == Path(tiny("policy"))
    for kind, what in (("bt_llama3", "kind 'bt'"), ("gpm", "kind 'gpm'"), ("armorm", "kind 'armorm'"),
                       ("pair_pm", "kind 'pair_pm', from")):
        with pytest.raises(ValueError, match=f"is a reward model \\({what}"):
            check_policy(tiny(kind))
    with pytest.raises(ValueError, match="has no LM head"):
        check_policy(_without_lm_head(tiny("policy"), tmp_path / "headless"))
    out = tmp_path / "run"
    res = _cli(*_recipe(tiny, prompts_file, out, policy=tiny("bt_llama3"), recipe="iterative-dpo"))
    _short_and_clean(res, "is a reward model (kind 'bt'", "give the language model to train as --policy")
    assert not out.exists()


def test_a_vision_language_policy_is_said_to_train_its_language_model(tiny, tmp_path, caplog):
    """Qwen3.5 ships as a vision-language model: the recipes load its language model (AutoModelForCausalLM's class
    for it) and each iteration saves that alone, which the run says before any work; Gemma-3's causal-LM class is
    the full model (nothing said); one transformers has no causal LM for is refused."""
    with caplog.at_level("WARNING", logger="rmplugins"):
        check_policy(tiny("genrm_qwen35"))
        check_policy(tiny("genrm_gemma3"))
    said = [r.getMessage() for r in caplog.records if "vision tower" in r.getMessage()]
    assert len(said) == 1 and "Qwen3_5ForCausalLM" in said[0] and "Qwen3.5-judge" in said[0]
    odd = tmp_path / "mistral3"
    shutil.copytree(tiny("genrm_gemma3"), odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps(dict(config, model_type="mistral3",
                                                     architectures=["Mistral3ForConditionalGeneration"])))
    with pytest.raises(ValueError, match="not a causal language model transformers loads as one"):
        check_policy(odd)


# ------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_a_recipe_says_how_to_resume_and_the_resume_finishes(tiny, prompts_file, tmp_path):
    out = tmp_path / "run"
    args = _recipe(tiny, prompts_file, out, "--chunk-size", "1")
    res = _cli(*args, env={"RMPLUGINS_RECIPES_INTERRUPT_AFTER": "iter-1/generate/chunk-2"})
    assert res.returncode == 130, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("rmplugins rejection-sampling: interrupted; re-run the same "
                                                   "command to resume (finished stages and saved chunks are kept)")
    partial = out / "iter-1" / "candidates.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 2  # the two finished chunks are kept
    res = _cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming generation after 2 finished prompts" in res.stderr
    assert len((out / "iter-1" / "best.jsonl").read_text().splitlines()) == len(PROMPTS)


# ------------------------------------------------------------------------------------------- the server
def test_serve_with_a_policy_tokenizer_that_is_not_there_names_the_option_before_loading(tiny, tmp_path):
    started = time.monotonic()
    res = _cli("serve", "--model", tiny("armorm"), "--policy-tokenizer", "/nope", "--port", "0")
    _short_and_clean(res, "--policy-tokenizer /nope: no such directory")
    assert "loading" not in res.stderr and time.monotonic() - started < 60
    res = _cli("serve", "--model", tiny("armorm"), "--policy-tokenizer", str(tmp_path), "--port", "0")
    _short_and_clean(res, f"--policy-tokenizer {tmp_path}", "has no tokenizer files")


# ------------------------------------------------------------------------------------------- silently wrong
def test_a_gpm_prompt_longer_than_max_length_is_refused_not_a_silent_tie(tiny):
    rm = rmplugins.load_reward_model(tiny("gpm"), device="cpu", max_length=96)
    long_prompt = "Tell me about the books of the city and the world, please. " * 30
    a, b = "Gorgeous lovely stunning answer.", "Sorry I cannot."
    with pytest.raises(ValueError, match="would leave none of the response, and every response would tie"):
        rm.compare([long_prompt], [a], [b])
    rows = rm.compare_rows([long_prompt, "Short question?"], [a, a], [b, b])
    assert rows.scores[0] is None and "max_length is 96" in rows.reasons[0] and rows.kinds == {0: "too_long"}
    assert rows.scores[1] is not None and rows.scores[1] != 0.5
    with pytest.raises(ValueError, match="would leave none of the response"):
        rm.rank(long_prompt, [a, b, "Third."])
    # cut inside the response (the reference pipeline's right truncation): scored, and different responses differ
    medium, long_answer = "Tell me about books. " * 3, " ".join([a] * 8)
    ids = rm.encode([{"role": "user", "content": medium}, {"role": "assistant", "content": long_answer}])[0]
    assert len(ids) == 96
    p = rm.compare([medium], [long_answer], [b])[0]
    assert 0 < p < 1 and p != 0.5


def test_a_group_size_that_does_not_match_the_batch_is_an_error(models):
    rf = rmplugins.RewardFunction(models("pair_pm"), num_generations=8)
    with pytest.raises(ValueError, match="6 rows are not whole groups of 8"):
        rf(prompts=["p"] * 6, completions=[f"answer {i}" for i in range(6)])
    rf = rmplugins.RewardFunction(models("pair_pm"), num_generations=3)
    assert all(r is not None for r in rf(prompts=["p"] * 3 + ["q"] * 3, completions=[f"c{i}" for i in range(6)]))


# ------------------------------------------------------------------------------------------- noise
def test_no_progress_silences_every_bar_and_trl_s_vllm_warning_is_filtered(tiny, prompts_file, tmp_path):
    res = _cli(*_recipe(tiny, prompts_file, tmp_path / "run", recipe="iterative-dpo"))
    assert res.returncode == 0, res.stderr[-2000:]
    for bar in ("%|", "it/s]", "s/it]", "Loading weights", "Writing model shards", "Tokenizing", "Map"):
        assert bar not in res.stderr, f"a progress bar ({bar!r}) under --no-progress:\n{res.stderr[-2000:]}"
    code = "import rmplugins; rmplugins.RewardFunction; from trl import GRPOConfig, GRPOTrainer"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TRL currently supports vLLM" not in res.stderr
