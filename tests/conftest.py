"""Shared fixtures: the tiny real-layout checkpoints, built once per test session into a temp dir.

The directory is exported as RMPLUGINS_TINY_DIR so subprocesses (CLI, accelerate launch) find the same files.
"""

import os

import pytest
import torch

from rmplugins.testing import tiny_checkpoint

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
