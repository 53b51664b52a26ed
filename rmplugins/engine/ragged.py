"""Many sequences laid end to end in one row: a forward with no padding at all.

The linear layers, norms and MLP act on each token alone, so they do not care where a sequence starts; only the
attention does. Laid end to end, a micro-batch of prompts and their continuations is one ``[1, T]`` row whose T is
the unique-token floor of what it holds: every matrix multiply runs at the full token count (the shape a CPU's
matrix units are fastest at) instead of one small padded batch per prefix pass and per length bucket.

A :class:`RaggedLayout` says where each piece lies and how it attends (:func:`.attention.ragged_attention` does it):
a *piece* attends causally within itself (pieces of similar length gathered into small padded batches for one fused
call each: the padding is paid in attention only, never in the matmuls), and a *continuation* piece also attends to
its prompt piece's keys/values in the same forward, or to a prompt an earlier call kept (the log-sum-exp merge of
:mod:`.attention`). Exact: every token sees exactly the tokens it sees in a forward of its own sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .packing import pack

BUCKET_OVERHEAD = 64  # one more attention call, in padded tokens, when grouping pieces by length
ALONE_TOKENS = 256    # a piece this long attends in a call of its own, on its slice of the row (no gather, no pad)


@dataclass
class Piece:
    """``tokens`` at positions ``start, start + 1, ...`` of their sequence; ``prompt``: the index of the piece they
    continue (``start`` is its length); ``kept``: instead, the index of a prompt cache kept by an earlier call
    (``start`` tokens long) that the forward is given; neither: a piece starting its sequence."""

    tokens: list[int]
    start: int = 0
    prompt: int | None = None
    kept: int | None = None


@dataclass
class RaggedLayout:
    """``ids``/``position_ids`` ``[1, T]``; ``offsets[i]``: where piece ``i`` begins in the row; ``alone``: the
    ``(offset, length)`` of the pieces that attend in a call of their own; ``buckets``: per attention call of the
    others, the flat positions ``[rows, width]`` of its padded batch, which of its ``rows * width`` slots are real
    and where they go; ``prompts``: per prompt piece with continuations, ``(offset, length, the flat positions
    of all its continuations' tokens)``; ``kept_rows[i]``: the flat positions continuing kept prompt ``i``."""

    ids: torch.Tensor
    position_ids: torch.Tensor
    offsets: list[int]
    alone: list[tuple[int, int]]
    buckets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    prompts: list[tuple[int, int, torch.Tensor]]
    kept_rows: list[torch.Tensor]

    @property
    def tokens(self) -> int:
        return self.ids.shape[1]

    def to(self, device: torch.device) -> RaggedLayout:
        move = lambda t: t.to(device)  # noqa: E731
        return RaggedLayout(move(self.ids), move(self.position_ids), self.offsets, self.alone,
                            [tuple(map(move, b)) for b in self.buckets],
                            [(o, n, move(rows)) for o, n, rows in self.prompts], [move(r) for r in self.kept_rows])


def lay_out(pieces: list[Piece]) -> RaggedLayout:
    """The pieces end to end (in order), and the attention's plan over them."""
    offsets, at = [], 0
    for p in pieces:
        if not p.tokens:
            raise ValueError("an empty piece cannot be laid out")
        offsets.append(at)
        at += len(p.tokens)
    ids = torch.tensor([t for p in pieces for t in p.tokens], dtype=torch.long).unsqueeze(0)
    position_ids = torch.cat([torch.arange(p.start, p.start + len(p.tokens)) for p in pieces]).unsqueeze(0)

    children: dict[int, list[int]] = {}
    of_kept: dict[int, list[int]] = {}
    for i, p in enumerate(pieces):
        if p.prompt is not None and p.kept is not None:
            raise ValueError("a piece continues either a prompt piece or a kept prompt, not both")
        if p.prompt is not None:
            q = pieces[p.prompt]
            if q.prompt is not None or q.kept is not None or p.start != len(q.tokens) or q.start:
                raise ValueError("a continuation must follow a whole prompt piece")
            children.setdefault(p.prompt, []).append(i)
        if p.kept is not None:
            of_kept.setdefault(p.kept, []).extend(range(offsets[i], offsets[i] + len(p.tokens)))
    if sorted(of_kept) != list(range(len(of_kept))):
        raise ValueError("kept prompts are numbered 0, 1, ... in the order the forward is given them")

    prompts = [(offsets[k], len(pieces[k].tokens),
                torch.tensor([f for i in kids for f in range(offsets[i], offsets[i] + len(pieces[i].tokens))],
                             dtype=torch.long))
               for k, kids in sorted(children.items())]
    alone = [(offsets[i], len(p.tokens)) for i, p in enumerate(pieces) if len(p.tokens) >= ALONE_TOKENS]
    short = [i for i, p in enumerate(pieces) if len(p.tokens) < ALONE_TOKENS]
    buckets = []
    for batch in pack(short, lambda i: len(pieces[i].tokens), max(at, 1) * 4, BUCKET_OVERHEAD):
        width = max(len(pieces[i].tokens) for i in batch)
        index = torch.zeros(len(batch), width, dtype=torch.long)
        real = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, i in enumerate(batch):
            n = len(pieces[i].tokens)
            # padding repeats the piece's first token: right of every real query, so causal attention never sees it
            index[r] = offsets[i]
            index[r, :n] = torch.arange(offsets[i], offsets[i] + n)
            real[r, :n] = True
        slots = real.reshape(-1).nonzero().squeeze(1)
        buckets.append((index, slots, index.reshape(-1).index_select(0, slots)))
    kept_rows = [torch.tensor(of_kept[k], dtype=torch.long) for k in range(len(of_kept))]
    return RaggedLayout(ids, position_ids, offsets, alone, buckets, prompts, kept_rows)
