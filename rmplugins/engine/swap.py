"""Module forwards swapped for one engine forward: the last layer's read-only rows (:mod:`.read_positions`), the fused
kernels (:mod:`.fused`). An instance attribute shadows the class's ``forward``; what the module had before (its class
method, or an instance attribute of its own such as accelerate's device hooks) comes back after the block."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch


@contextmanager
def forwards_swapped(replacements: Iterable[tuple[torch.nn.Module, Callable]]):
    """Within the block each module of ``replacements`` runs the forward paired with it."""
    swapped = []
    try:
        for module, forward in replacements:
            own = module.__dict__.get("forward")
            module.forward = forward
            swapped.append((module, own))
        yield
    finally:
        for module, own in reversed(swapped):
            if own is None:
                del module.forward
            else:
                module.forward = own
