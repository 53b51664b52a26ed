"""Shared fixtures: the tiny real-layout checkpoints, built once per test session into a temp dir that every
pytest-xdist worker shares (each checkpoint is built by whichever worker needs it first, under a file lock).

The directory is exported as RMPLUGINS_TINY_DIR so subprocesses (CLI, accelerate launch) find the same files.
Each test process computes with one torch thread: `make test` runs two processes side by side (pytest-xdist), and
two threads per process lose most of their time to barrier waits as soon as anything else shares the cores.
"""

import os

import pytest
import torch
from transformers import AutoTokenizer

from rmplugins.loading import load_reward_model
from rmplugins.testing import tiny_checkpoint

torch.set_num_threads(1)
# ...and so does every process a test starts (the CLI, servers, trainers, vLLM's CPU kernels): OpenMP reads these
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is inside the session's: share the session's
        shared = shared.parent
    root = os.environ.get("RMPLUGINS_TINY_DIR") or str(shared / "tiny")
    os.environ["RMPLUGINS_TINY_DIR"] = root
    return root


@pytest.fixture(scope="session")
def tiny(tiny_root):
    """``tiny("armorm")`` -> path of that family's tiny checkpoint."""
    return lambda kind: tiny_checkpoint(kind, tiny_root)


@pytest.fixture(scope="module")
def policy_tok(tiny):
    """The tiny policy's tokenizer: its chat template is what the frameworks' clients send to a server."""
    return AutoTokenizer.from_pretrained(tiny("policy"))


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


@pytest.fixture(scope="module")
def references():
    """``references(kind, make)`` -> ``make()``, built once per module and kind: a parity module checks the same
    reference (a card's pipeline, a model of its own) against both engines, so it is loaded once, not per engine."""
    built = {}

    def get(kind, make):
        if kind not in built:
            built[kind] = make()
        return built[kind]

    return get
