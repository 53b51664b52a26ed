"""Shared fixtures: the tiny real-layout checkpoints, built once per test session into a temp dir.

The directory is exported as RMPLUGINS_TINY_DIR so subprocesses (CLI, accelerate launch) find the same files.
"""

import os

import pytest
import torch

from rmplugins.loading import load_reward_model
from rmplugins.tiny import tiny_checkpoint

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    root = os.environ.get("RMPLUGINS_TINY_DIR") or str(tmp_path_factory.mktemp("tiny"))
    os.environ["RMPLUGINS_TINY_DIR"] = root
    return root


@pytest.fixture(scope="session")
def tiny(tiny_root):
    """``tiny("armorm")`` -> path of that family's tiny checkpoint."""
    return lambda kind: tiny_checkpoint(kind, tiny_root)


@pytest.fixture(scope="module")
def models(tiny):
    """``models("armorm", **options)`` -> that family's tiny model on CPU, loaded once per test module (modules
    may change a model's engine settings; they get their own copies)."""
    cache = {}

    def get(kind, **options):
        key = (kind, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = load_reward_model(tiny(kind), device="cpu", **options)
        return cache[key]

    return get
