"""Tiny checkpoints of every family in the real on-disk layout, built offline.

Model weights cannot be downloaded here, so tests, the demo and the benchmarks load these through the very code
path a hub id takes: ``config.json`` with the published ``architectures`` and extra fields, safetensors with
the published tensor names (bf16 backbones, fp32 ArmoRM heads), and tokenizers built with the ``tokenizers``
library that carry the real special tokens and chat templates (Llama-3, Mistral-Instruct, DeBERTa-v3 with the
PairRM prefix tokens). Weights are random but seeded and spread wide enough that wrong math shows.

    from rmplugins.testing import tiny_checkpoint
    path = tiny_checkpoint("armorm")          # built once into ~/.cache/rmplugins/tiny
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .backbones import (
    build_bt_deepseek_v3,
    build_bt_gemma3,
    build_bt_gpt_oss,
    build_bt_qwen3_moe,
    build_bt_qwen35,
    build_genrm_gemma3,
    build_genrm_qwen35,
    build_gpm_gemma,
)
from .builders import (
    build_armorm,
    build_bt,
    build_bt_gemma2,
    build_bt_inform,
    build_bt_llama3,
    build_bt_llama32,
    build_bt_qwen,
    build_gpm,
    build_pair_pm,
    build_pairrm,
    build_policy,
    build_prm,
)
from .judges import (
    build_genrm_gemma2,
    build_genrm_mistral,
    build_genrm_nemotron,
    build_genrm_qwen3,
    build_genrm_trained,
)

FORMAT_VERSION = "10"  # bump when a builder changes, so cached checkpoints are rebuilt
KINDS = ("bt", "bt_llama3", "armorm", "pair_pm", "pairrm", "better_pairrm", "gpm", "policy")


BUILDERS = {
    "bt": build_bt, "bt_llama3": build_bt_llama3, "armorm": build_armorm, "pair_pm": build_pair_pm,
    "pairrm": build_pairrm, "better_pairrm": lambda path: build_pairrm(path, variant="better"), "gpm": build_gpm,
    "policy": build_policy,
    # Bradley-Terry on the backbones 2025-26 reward models ship on
    "bt_qwen3": lambda path: build_bt_qwen(path, "3"), "bt_qwen25": lambda path: build_bt_qwen(path, "2.5"),
    "bt_gemma2": build_bt_gemma2, "bt_inform": build_bt_inform, "bt_llama32": build_bt_llama32, "prm": build_prm,
    # ... and on those that are not plain attention stacks (.backbones): hybrid, vision-language, MoE, MLA, sinks
    "bt_qwen35": build_bt_qwen35, "bt_gemma3": build_bt_gemma3, "bt_qwen3_moe": build_bt_qwen3_moe,
    "bt_gpt_oss": build_bt_gpt_oss, "bt_deepseek_v3": build_bt_deepseek_v3,
    "genrm_qwen35": build_genrm_qwen35, "genrm_gemma3": build_genrm_gemma3, "gpm_gemma": build_gpm_gemma,
    # the same layouts on the published vocabularies (128,256 Llama-3 ids; Mistral's 32,000 + [PAD])
    "bt_real_vocab": lambda path: build_bt(path, vocab="mistral-v1"),
    "bt_llama3_real_vocab": lambda path: build_bt_llama3(path, vocab="llama3"),
    "armorm_real_vocab": lambda path: build_armorm(path, vocab="llama3"),
    "pair_pm_real_vocab": lambda path: build_pair_pm(path, vocab="llama3"),
    "gpm_real_vocab": lambda path: build_gpm(path, vocab="llama3.1"),
    # generative judges: causal chat LMs (the Llama-3 one is the policy's layout)
    "genrm_qwen3": build_genrm_qwen3, "genrm_nemotron": build_genrm_nemotron, "genrm_gemma2": build_genrm_gemma2,
    "genrm_mistral": build_genrm_mistral, "genrm_trained": build_genrm_trained,
}
# Directory names mimic the hub repositories (for readable paths; nothing is decided by a name).
DIR_NAMES = {
    "bt": "RM-Mistral-7B", "bt_llama3": "FsfairX-LLaMA3-RM-v0.1", "armorm": "ArmoRM-Llama3-8B-v0.1",
    "pair_pm": "pair-preference-model-LLaMA3-8B", "pairrm": "PairRM-hf", "better_pairrm": "Better-PairRM",
    "gpm": "GPM-Llama-3.1-8B", "policy": "tiny-llama3-policy",
    "bt_qwen3": "Skywork-Reward-V2-Qwen3-0.6B", "bt_qwen25": "Qwen2.5-RM",
    "bt_gemma2": "Skywork-Reward-Gemma-2-27B-v0.2", "bt_inform": "published-vocab/INF-ORM-Llama3.1-70B",
    "prm": "Qwen2.5-Math-PRM-7B", "bt_llama32": "published-vocab/Skywork-Reward-V2-Llama-3.2-1B",
    "bt_real_vocab": "published-vocab/RM-Mistral-7B", "bt_llama3_real_vocab": "published-vocab/FsfairX-LLaMA3-RM-v0.1",
    "armorm_real_vocab": "published-vocab/ArmoRM-Llama3-8B-v0.1",
    "pair_pm_real_vocab": "published-vocab/pair-preference-model-LLaMA3-8B",
    "gpm_real_vocab": "published-vocab/GPM-Llama-3.1-8B",
    "genrm_qwen3": "judges/Qwen3-judge", "genrm_nemotron": "judges/Qwen3-Nemotron-GenRM-style",
    "genrm_gemma2": "judges/Gemma-2-judge", "genrm_mistral": "judges/Mistral-judge",
    "genrm_trained": "judges/Qwen3-judge-trained",
    "bt_qwen35": "backbones/Qwen3.5-RM", "bt_gemma3": "backbones/Gemma-3-RM", "bt_qwen3_moe": "backbones/Qwen3-MoE-RM",
    "bt_gpt_oss": "backbones/gpt-oss-RM", "bt_deepseek_v3": "backbones/DeepSeek-V3-RM",
    "genrm_qwen35": "judges/Qwen3.5-judge", "genrm_gemma3": "judges/Gemma-3-judge", "gpm_gemma": "GPM-Gemma-2B",
}


@contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path`` for the block (released by the OS even after kill -9): two processes that
    want the same checkpoint (pytest-xdist workers, two demos at once) build it once, the second waiting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_directory_atomically(path: str | os.PathLike, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``path``, so a killed build never leaves a half checkpoint;
    a complete ``path`` (with its config.json) is kept as it is, and concurrent callers build it once."""
    path = Path(path)
    with _locked(path):
        if (path / "config.json").exists():
            return path
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        try:
            build(tmp)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


def build_tiny_checkpoint(kind: str, path: str | os.PathLike) -> Path:
    """Write the tiny checkpoint of ``kind`` into ``path`` (atomically: a temp dir renamed into place)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown tiny checkpoint {kind!r}; choose one of {list(BUILDERS)}")
    return build_directory_atomically(path, BUILDERS[kind])


def tiny_root(root: str | os.PathLike | None = None) -> Path:
    """Where tiny checkpoints are cached: ``root``, else ``$RMPLUGINS_TINY_DIR``, else ``~/.cache/rmplugins/tiny``,
    one folder per ``FORMAT_VERSION``."""
    base = Path(root or os.environ.get("RMPLUGINS_TINY_DIR") or Path.home() / ".cache" / "rmplugins" / "tiny")
    return base / f"v{FORMAT_VERSION}"


def tiny_checkpoint(kind: str, root: str | os.PathLike | None = None) -> str:
    """Path of the cached tiny checkpoint of ``kind``, building it on first use."""
    path = tiny_root(root) / DIR_NAMES.get(kind, kind)
    if not (path / "config.json").exists():
        build_tiny_checkpoint(kind, path)
    return str(path)
