"""The README and the documentation as a newcomer meets them: every Python snippet of the README runs as written
(its hub ids resolved from a local Hugging Face cache holding the built-in tiny checkpoints, as a download would
leave them), its `rmplugins` commands run, and the documentation builds with `mkdocs build --strict` (a broken link
or a stale API reference fails)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from served import rmplugins_serve

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The hub ids the README uses, and the tiny checkpoint with the same layout that stands in for each
HUB_IDS = {
    "RLHFlow/ArmoRM-Llama3-8B-v0.1": "armorm",
    "RLHFlow/pair-preference-model-LLaMA3-8B": "pair_pm",
    "Qwen/Qwen2.5-0.5B-Instruct": "policy",
    "meta-llama/Meta-Llama-3-8B-Instruct": "policy",
    "Qwen/Qwen3-Reranker-4B": "genrm_qwen3",
}


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny):
    """``HF_HOME`` with a hub cache in which each README hub id is a snapshot of its tiny stand-in."""
    home = tmp_path_factory.mktemp("hf-home")
    for hub_id, kind in HUB_IDS.items():
        repo = home / "hub" / f"models--{hub_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
        shutil.copytree(tiny(kind), snapshot)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(snapshot.name)
    return str(home)


def _env(hub_cache):
    return {**os.environ, "HF_HOME": hub_cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def test_the_readme_uses_only_hub_ids_the_test_can_stand_in_for():
    used = set(re.findall(r"\"([\w.-]+/[\w.-]+)\"", "\n".join(_blocks(README, "python"))))
    used |= set(re.findall(r"--(?:model|policy-tokenizer) ([\w.-]+/[\w.-]+)", "\n".join(_blocks(README, "bash"))))
    assert used <= set(HUB_IDS), f"add a stand-in for {used - set(HUB_IDS)} to HUB_IDS"


@pytest.mark.parametrize("index", range(len(_blocks(README, "python"))))
def test_every_python_snippet_of_the_readme_runs_as_written(index, hub_cache, tmp_path):
    code = _blocks(README, "python")[index]
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(hub_cache), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, f"README snippet {index} failed:\n{code}\n{res.stderr[-3000:]}"


def _commands() -> list[list[str]]:
    """The README's `.venv/bin/rmplugins ...` lines, as argument lists (the virtual environment's command is this
    interpreter's ``-m rmplugins``)."""
    out = []
    for block in _blocks(README, "bash"):
        for line in block.splitlines():
            command = line.split("#")[0].strip()
            if command.startswith(".venv/bin/rmplugins"):
                out.append([sys.executable, "-m", "rmplugins", *command.split()[1:]])
    return out


def test_the_readme_commands_run(hub_cache):
    commands = _commands()
    assert any("--help" in c for c in commands) and any("serve" in c for c in commands)
    for command in commands:
        if "serve" not in command:
            res = subprocess.run(command, env=_env(hub_cache), capture_output=True, text=True, timeout=120)
            assert res.returncode == 0 and "usage: rmplugins" in res.stdout, res.stderr[-2000:]
            continue
        # the README's server on a port the system picks: its own (5000) may be held here or taken by the other
        # test worker, and the command is what is tested, not the port
        args = command[command.index("serve") + 1:]
        if "--port" in args:
            del args[args.index("--port"):args.index("--port") + 2]
        with rmplugins_serve(args, env=_env(hub_cache)) as (server, _, _):  # up: /health answered 200
            assert server.poll() is None


def test_the_documentation_builds_strictly(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("load_reward_model", "RewardFunction", "create_app", "run_recipe"):
        assert name in api
