"""A model's outputs checked for NaN and infinity before any of them becomes a reward.

A forward in float16 overflows above 65,504 (a long conversation, a model trained in bfloat16), and a checkpoint can
hold NaN weights: the outputs are then NaN or infinite. Let through, a NaN reward would read as a judge's missing
verdict here and as a reward of 0 in TRL's sum over reward functions, and an infinite one would blow up a group's
advantages: wrong rewards without an error. Such an output is a fault of the model or its dtype, not of a sample, so
it is raised (a RuntimeError: never a sample's refusal, which is a ValueError), naming the dtype and what to try.
A generating judge's NaN score is its own marker of an answer without a verdict, and is let through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a check runs: the remote client reads NON_FINITE without it
    import torch


NON_FINITE = "non_finite"  # the server's 500 body says ``"fault": "non_finite"``: rmplugins' client stops, not retries


class NonFiniteOutput(RuntimeError):
    """A model's forward gave NaN or infinity where a reward is read."""


def _tensors(out: Any):
    import torch

    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for value in out.values():
            yield from _tensors(value)
    elif isinstance(out, (tuple, list)):
        for value in out:
            yield from _tensors(value)


def check_finite(out: Any, *, model: str, dtype: torch.dtype, nan_allowed: bool = False,
                 neg_inf_allowed: bool = False) -> None:
    """Raise :class:`NonFiniteOutput` if a floating tensor in ``out`` (a tensor, or a dict, tuple or list of them, as a
    family's batched call returns) holds infinity, or NaN unless ``nan_allowed`` (a generating judge's no-verdict
    score); ``neg_inf_allowed``: -inf is no fault there (a token banned from generation, an answer's log-probability
    after one). ``model`` and ``dtype`` name what gave it, for the message."""
    import torch

    for tensor in _tensors(out):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        bad = ~torch.isfinite(tensor)
        if nan_allowed:
            bad &= ~torch.isnan(tensor)
        if neg_inf_allowed:
            bad &= tensor != float("-inf")
        if not bool(bad.any()):
            continue
        found = tensor[bad]
        what = ", ".join(f"{int(n)} {name}" for n, name in (
            (torch.isnan(found).sum(), "NaN"), (torch.isinf(found).sum(), "infinite")) if n)
        rows = sorted({int(r) for r in bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten()}) \
            if tensor.dim() else [0]
        hint = ("float16 overflows above 65,504: load it with dtype='bfloat16' or 'float32'"
                if dtype == torch.float16 else
                "its checkpoint may hold NaN or infinite weights, or its arithmetic overflowed: load it with "
                "dtype='float32' to tell which")
        raise NonFiniteOutput(
            f"{model} gave {what} values ({len(rows)} of {tensor.shape[0] if tensor.dim() else 1} rows, first row "
            f"{rows[0]}) in {str(dtype).removeprefix('torch.')}: no reward is returned rather than a wrong one; "
            f"{hint}")
