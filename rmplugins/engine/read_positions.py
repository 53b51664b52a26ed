"""Computing the last decoder layer only where it is read: the engine's heads read the final hidden state at a
few positions per row, so the last layer's query/output projections and MLP (which act on each position alone)
run only there. Exact: keys and values are still computed everywhere, and every other final hidden state is
discarded anyway."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .shapes import rounded
from .swap import forwards_swapped


def last_layer_row_modules(backbone: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The parts of the last decoder layer that act on each position separately and whose output at a position
    only that position's final hidden state needs: the query and output projections and the MLP. Keys and
    values are still computed everywhere (the read positions attend to them). None when the layout differs."""
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        return None
    last = layers[-1]
    attn = getattr(last, "self_attn", None)
    parts = [getattr(attn, "q_proj", None), getattr(attn, "o_proj", None), getattr(last, "mlp", None)]
    return parts if all(isinstance(m, torch.nn.Module) for m in parts) else None


@contextmanager
def reading_only(modules: list[torch.nn.Module] | None, width: int, positions: list[list[int]],
                 device: torch.device, round_rows: bool = False):
    """During one forward of rows ``width`` wide, run the last layer's query/output projections and MLP only
    at the flattened positions that will be read (exact: every other final hidden state is discarded, and
    keys/values are still computed for all positions). Saves most of one layer of compute per unread token.
    Yields the flat read positions (None when the layout is not recognised and nothing is restricted).
    ``round_rows``: the modules run on the read rows and copies of the last, their count rounded up (.shapes)."""
    if modules is None:
        yield None
        return
    flat_reads = [r * width + p for r, pos in enumerate(positions) for p in pos]
    rows = torch.as_tensor(flat_reads, dtype=torch.long, device=device)
    n = len(flat_reads)
    copies = rounded(n) - n if round_rows else 0
    run = torch.as_tensor(flat_reads + flat_reads[-1:] * copies, dtype=torch.long, device=device) if copies else rows

    def restrict(forward, batched):
        def forward_on_read_rows(x, *args, **kwargs):
            flat = x.reshape(-1, x.shape[-1])
            picked = flat.index_select(0, run.to(flat.device))
            result = forward(picked.unsqueeze(0) if batched else picked, *args, **kwargs)
            y = (result[0] if isinstance(result, tuple) else result)
            y = y[0, :n] if batched else y[:n]
            out = y.new_zeros(flat.shape[0], y.shape[-1])
            out.index_copy_(0, rows.to(out.device), y)
            out = out.reshape(*x.shape[:-1], y.shape[-1])
            return (out, *result[1:]) if isinstance(result, tuple) else out  # GPT-OSS's MLP adds its router
        return forward_on_read_rows                                          # scores (of the read rows; unused)

    # each wraps the forward the module has now (accelerate's device hooks, the fused kernels); a mixture of experts
    # (Qwen3-MoE's, GPT-OSS's block) reads its rows as one [1, rows, width] batch, the rest as [rows, width]
    with forwards_swapped([(module, restrict(module.forward, hasattr(module, "experts"))) for module in modules]):
        yield rows
