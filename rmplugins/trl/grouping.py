"""Where the completions of one prompt sit in a TRL batch, and how to see a whole group when it straddles processes.

GRPO/RLOO lay out ``num_generations`` completions of a prompt contiguously; online DPO lays out two completions
per prompt as blocks ``[p0c0, p1c0, ..., p0c1, p1c1, ...]`` (pair i with i + B). Each process calls the reward
function on its own contiguous slice of the generation batch, so a group may be cut between two processes
unless ``per_device_train_batch_size * steps_per_generation`` is a multiple of ``num_generations``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def prompt_key(prompt: Any) -> Any:
    """Hashable identity of a prompt (a string or a list of chat messages); never raises."""
    if isinstance(prompt, str):
        return (("user", prompt),)
    if isinstance(prompt, (list, tuple)):
        key = []
        for m in prompt:
            if isinstance(m, dict):
                content = m.get("content")
                key.append((m.get("role"), content if isinstance(content, str) else repr(content)))
            else:
                key.append(("?", repr(m)))
        return tuple(key)
    return ("?", repr(prompt))


def group_indices(keys: Sequence[Any], num_generations: int | None = None) -> list[list[int]]:
    """Row indices of each group: consecutive blocks of ``num_generations`` rows, or runs of identical prompts.

    With ``num_generations`` every block must hold a single prompt, else the setting does not match the batch.
    """
    n = len(keys)
    if num_generations:
        if n % num_generations:
            raise ValueError(
                f"num_generations={num_generations} does not match the batch: {n} rows are not whole groups of "
                f"{num_generations} (the last would be scored within {n % num_generations} completions, silently "
                "unlike the others). Pass the trainer's num_generations (GRPOConfig/RLOOConfig), or leave "
                "num_generations=None to group runs of identical prompts")
        groups = [list(range(s, s + num_generations)) for s in range(0, n, num_generations)]
        for g in groups:
            if any(keys[i] != keys[g[0]] for i in g):
                raise ValueError(
                    f"num_generations={num_generations} does not match the batch: rows {g[0]}..{g[-1]} hold "
                    "different prompts. Pass the trainer's num_generations (GRPOConfig/RLOOConfig), or leave "
                    "num_generations=None to group runs of identical prompts")
        return groups
    groups: list[list[int]] = []
    for i, k in enumerate(keys):
        if groups and keys[groups[-1][-1]] == k:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def is_pair_layout(keys: Sequence[Any]) -> bool:
    """True for online DPO's block layout: row i and row i + B share a prompt, and not all prompts are equal."""
    n = len(keys)
    if n < 2 or n % 2:
        return False
    b = n // 2
    if any(keys[i] != keys[i + b] for i in range(b)):
        return False
    # One repeated prompt is better read as one group (GRPO's num_generations layout) than as B pairs.
    return any(k != keys[0] for k in keys)


def dist_info() -> tuple[int, int]:
    """(rank, world_size) of the initialised torch.distributed group (accelerate, torchrun), else (0, 1)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_objects(obj: Any) -> list[Any]:
    """One entry per process, in rank order (gloo on CPU, NCCL on GPU: torch moves the pickles itself)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def layout_hint(num_generations: int | None) -> str:
    """The batch settings that keep every group inside one process (for error messages)."""
    g = num_generations or "num_generations"
    return (f"make per_device_train_batch_size * steps_per_generation (the local generation batch) a multiple of "
            f"num_generations={g} (e.g. per_device_train_batch_size={g}), or use distributed='gather' so the "
            "reward function gathers straddling groups across processes")
