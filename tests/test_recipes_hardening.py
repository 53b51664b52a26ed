"""The recipes against careless use: two runs on one directory, bad options, a full disk, read-only media.
Each bad option is refused before any work and leaves nothing that would lock the directory against the fix."""

import fcntl
import os
import subprocess
from pathlib import Path

import pytest
from test_recipes_e2e import ROOT, TRAIN, _cli, prompts_file  # noqa: F401  (pytest fixture)

from rmplugins.recipes.config import RecipeConfig

pytestmark = pytest.mark.slow


def _args(tiny, prompts, out, recipe="rejection-sampling", reward=None, extra=()):
    return [recipe, "--policy", tiny("policy"), "--reward-model", reward or tiny("bt_llama3"), "--prompts", prompts,
            "--output", str(out), "--iterations", "1", "--num-candidates", "2", *TRAIN, *extra]


def test_a_second_run_on_the_same_output_is_refused_and_told_who_holds_it(tiny, prompts_file, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:  # what a first run holds while it works
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on trainer-7, started 2026-11-22 03:00:00\n")
        held.flush()
        res = _cli(_args(tiny, prompts_file, out))
    assert res.returncode == 2
    assert "is in use by another run (pid 4242 on trainer-7" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing was touched


@pytest.mark.parametrize("option,value,reason", [
    ("--learning-rate", "-1", "not a positive number"), ("--temperature", "0", "not a positive number"),
    ("--top-p", "2", "not in (0, 1]"), ("--chunk-size", "0", "not a positive integer"),
    ("--generation-batch-size", "0", "not a positive integer"), ("--num-candidates", "x", "not a number"),
    ("--vllm-engine-args", "[1]", "is not a JSON object"), ("--vllm-engine-args", "{x", "is not JSON")])
def test_bad_numbers_are_refused_by_the_command_line(tiny, prompts_file, tmp_path, option, value, reason):  # noqa: F811
    out = tmp_path / "run"
    res = _cli(_args(tiny, prompts_file, out, extra=(option, value)))
    assert res.returncode == 2 and reason in res.stderr and not out.exists()


def test_bad_options_are_refused_before_any_work_and_the_fix_runs(tiny, prompts_file, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    no_config = tmp_path / "rm-without-config"
    no_config.mkdir()
    cases = [
        ([], str(no_config), "without config.json"),
        (["--backend", "vllm", "--vllm-engine-args", '{"enforce_eager": true, "no_such_arg": 1}'], None,
         "--vllm-engine-args: no_such_arg: not an argument of vllm.LLM"),
        ([], tiny("policy"), "plain causal language model"),  # the policy given as reward model
        (["--reward-variant", "better"], None, "variant='better' is a PairRM option"),
    ]
    for extra, reward, reason in cases:
        res = _cli(_args(tiny, prompts_file, out, reward=reward, extra=extra))
        assert res.returncode == 2 and reason in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert not (out / "run.json").exists() and not list(out.glob("iter-*/*.jsonl*"))  # no work done
    res = _cli(_args(tiny, prompts_file, out))  # the corrected command runs in the same directory
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "iter-1" / "best.jsonl").exists()
    with pytest.raises(ValueError, match="--temperature must be above 0"):
        RecipeConfig(recipe="iterative-dpo", policy="p", reward_model="r", prompts="f", output="o", temperature=0)
    with pytest.raises(ValueError, match="--vllm-engine-args is an option of --backend vllm"):
        RecipeConfig(recipe="iterative-dpo", policy="p", reward_model="r", prompts="f", output="o",
                     vllm_engine_args={"enforce_eager": True})
    with pytest.raises(ValueError, match="cannot set 'model'"):
        RecipeConfig(recipe="iterative-dpo", policy="p", reward_model="r", prompts="f", output="o", backend="vllm",
                     vllm_engine_args={"model": "x"})
    with pytest.raises(ValueError, match="--chunk-size must be a whole number"):
        RecipeConfig(recipe="iterative-dpo", policy="p", reward_model="r", prompts="f", output="o", chunk_size=0)


@pytest.mark.parametrize("body,reason", [
    ('raise ImportError("operator torchvision::nms does not exist")',
     "vLLM is installed but cannot be imported (ImportError: operator torchvision::nms does not exist)"),
    ('raise ModuleNotFoundError("No module named \'vllm\'", name="vllm")', "vLLM is not installed; install")])
def test_a_missing_or_broken_vllm_is_reported_before_any_work(tiny, prompts_file, tmp_path, body, reason):  # noqa: F811
    """A vllm package that fails to import, put first on the path, stands for a broken or absent install (the
    torchvision mismatch of the CPU build is the one met here)."""
    broken = tmp_path / "site" / "vllm"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(body + "\n")
    out = tmp_path / "run"
    res = _cli(_args(tiny, prompts_file, out, extra=("--backend", "vllm")),
               {"PYTHONPATH": os.pathsep.join([str(broken.parent), str(ROOT)])})
    assert res.returncode == 2 and reason in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not (out / "run.json").exists()


@pytest.mark.parametrize("package,body", [
    ("trl", "raise ImportError(\"cannot import name 'PreTrainedModel' from 'transformers'\")"),
    ("datasets", "raise ModuleNotFoundError(\"No module named 'datasets'\", name='datasets')")])
def test_a_broken_trl_or_datasets_is_reported_before_any_work(tiny, prompts_file, tmp_path, package, body):  # noqa: F811
    """TRL and datasets train each iteration: a TRL that does not match the installed transformers (or a missing
    datasets) raised a traceback after the candidates were generated and scored, with --no-progress at once."""
    broken = tmp_path / "site" / package
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(body + "\n")
    out = tmp_path / "run"
    res = _cli(_args(tiny, prompts_file, out), {"PYTHONPATH": os.pathsep.join([str(broken.parent), str(ROOT)])})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"the recipes train with TRL on datasets, and `import {package}` fails here" in res.stderr
    assert "pip install 'trl>=1.16,<2' 'datasets>=3.0'" in res.stderr and not out.exists()


def _mount_tmpfs(path: Path, size: str):
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here to make a small or read-only disk: {res.stderr.decode()[:200]}")


def test_full_disk_and_read_only_media(tiny, prompts_file, tmp_path):  # noqa: F811
    full = tmp_path / "full"
    _mount_tmpfs(full, "24k")
    try:
        res = _cli(_args(tiny, prompts_file, full / "run"))
        assert res.returncode == 2, res.stderr[-2000:]
        assert "the disk is full" in res.stderr and "re-run the same command" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        subprocess.run(["umount", str(full)], check=False)

    media = tmp_path / "media"
    _mount_tmpfs(media, "64m")
    try:
        out = media / "run"
        first = _cli(_args(tiny, prompts_file, out))
        assert first.returncode == 0, first.stderr[-2000:]
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        again = _cli(_args(tiny, prompts_file, out))  # a finished run re-runs on read-only media
        assert again.returncode == 0, again.stderr[-2000:]
        assert "mean reward" in again.stdout and "best kept" in again.stdout
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        more = _cli(_args(tiny, prompts_file, out, extra=("--iterations", "2")))  # unfinished work: refused
        assert more.returncode == 2 and "is read-only and its run is not finished" in more.stderr
    finally:
        subprocess.run(["umount", str(media)], check=False)


def test_gpu_memory_utilization_is_an_option_of_the_vllm_backend(tiny, prompts_file, tmp_path):  # noqa: F811
    """Given with the hf backend it was accepted and ignored."""
    from rmplugins.cli import build_parser
    from rmplugins.recipes.cli import config_from_args

    parser = build_parser()
    args = parser.parse_args(_args(tiny, prompts_file, tmp_path / "run", extra=("--gpu-memory-utilization", "0.7")))
    with pytest.raises(ValueError, match="--gpu-memory-utilization is vLLM's share of GPU memory: an option of"):
        config_from_args(args, "rejection-sampling")
    args = parser.parse_args(_args(tiny, prompts_file, tmp_path / "run", extra=(
        "--backend", "vllm", "--gpu-memory-utilization", "0.7")))
    assert config_from_args(args, "rejection-sampling").gpu_memory_utilization == 0.7
    args = parser.parse_args(_args(tiny, prompts_file, tmp_path / "run", extra=("--backend", "vllm")))
    assert config_from_args(args, "rejection-sampling").gpu_memory_utilization == 0.5


def test_report_to_reaches_the_config(tiny, prompts_file, tmp_path):  # noqa: F811
    from rmplugins.cli import build_parser
    from rmplugins.recipes.cli import config_from_args

    args = build_parser().parse_args(_args(tiny, prompts_file, tmp_path / "run", extra=("--report-to", "wandb")))
    config = config_from_args(args, "rejection-sampling")
    assert config.report_to == "wandb" and "report_to" not in config.fingerprint()  # a resume may change the tracker
    assert os.environ.get("WANDB_MODE") != "online"  # nothing here talks to a tracker
