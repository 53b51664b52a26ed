"""What the families share to load their heads and feed the engine: the score-head layouts a checkpoint's tensors
describe (transformers' linear ``score`` or INF-ORM's / Qwen2.5-Math-PRM's ``Linear -> ReLU -> Linear``), reading
small head tensors from safetensors, quiet loads of models whose head is read here, and the padding id."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..options import real_number


def score_head(shapes: dict[str, list[int]], hidden: int, labels: int = 1) -> str:
    """The score head the tensors describe: ``"linear"`` (transformers' ``score.weight [labels, hidden]``) or
    ``"mlp"`` (``Linear(hidden, hidden) -> ReLU -> Linear(hidden, labels)``: ``score.0.*``, ``score.2.*``, both
    with biases; INF-ORM with one label, Qwen2.5-Math-PRM with two). Anything else is refused with what was found:
    loading it as a plain classifier would leave a randomly initialised head and silently wrong rewards."""
    found = {k: v for k, v in shapes.items() if k == "score.weight" or k.startswith("score.")}
    if set(found) == {"score.weight"} and found["score.weight"] == [labels, hidden]:
        return "linear"
    mlp = {"score.0.weight": [hidden, hidden], "score.0.bias": [hidden], "score.2.weight": [labels, hidden],
           "score.2.bias": [labels]}
    if found == mlp:
        return "mlp"
    what = "Bradley-Terry" if labels == 1 else "process-reward"
    raise ValueError(f"unrecognised {what} score head: {found or 'no score.* tensors'} (hidden size {hidden}); "
                     f"supported: score.weight [{labels}, hidden] (a linear head) or score.0/score.2 weights and "
                     "biases (Linear -> ReLU -> Linear, as INF-ORM)")


def mlp_score_head(path, hidden: int, device, dtype, labels: int = 1) -> torch.nn.Sequential:
    """INF-ORM's head (and Qwen2.5-Math-PRM's, ``labels=2``), ``Linear(hidden, hidden) -> ReLU -> Linear(hidden,
    labels)``, with its ``score.0.*`` and ``score.2.*`` tensors read from the checkpoint's safetensors
    (transformers' classifier has a linear ``score`` and would leave these unread)."""
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, labels))
    head.load_state_dict(read_tensors(path, "score."), strict=True)
    return head.to(device=device, dtype=dtype).eval()


def read_tensors(path, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors named ``prefix...``, keyed by the rest of their names (small heads only: each is
    read whole)."""
    from safetensors import safe_open

    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            state.update({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    return state


@contextmanager
def quiet_transformers():
    """transformers' warnings silenced for a load whose head this library reads itself (its load report would call
    the head's tensors unexpected and a fresh ``score.weight`` missing)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def positive_temperature(option: str, value: Any, card: float) -> float:
    """A softmax or sigmoid temperature as a positive, finite number: 0 makes every probability NaN (or 0 and 1)
    and a negative one turns every preference around, both silently; ``True`` read as 1 and ``"0.1"`` as a
    number (:func:`~rmplugins.options.real_number` refuses both)."""
    try:
        number = real_number(option, value)
    except ValueError:
        number = math.nan
    if not 0 < number < math.inf:
        raise ValueError(f"{option} must be a positive number (the model card's is {card:g}), got {value!r}")
    return number


def pad_or_eos(tokenizer: Any) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its EOS (Llama-3 checkpoints often have no
    pad token; the engine never attends to padding, so any id will do)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
