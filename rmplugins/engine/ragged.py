"""Many sequences laid end to end in one row: a forward with no padding at all.

The linear layers, norms and MLP act on each token alone, so they do not care where a sequence starts; only the
attention does. Laid end to end, a micro-batch of prompts and their continuations is one ``[1, T]`` row whose T is
the unique-token floor of what it holds: every matrix multiply runs at the full token count (the shape a CPU's
matrix units are fastest at) instead of one small padded batch per prefix pass and per length bucket.

A :class:`RaggedLayout` says where each piece lies and how it attends (:func:`.attention.ragged_attention` does it).
A prompt's continuations follow it in the row, so the prompt and its continuations are one contiguous *span*: one
causal call of the span's queries over the prompt's keys (top-left causal: the prompt attends within itself, every
continuation token to the whole prompt) gives the prompt its attention and each continuation its part over the
prompt, with no gather and no copy. Every other piece, and each continuation within itself, attends causally over
its own tokens: a long one on its slice of the row, short ones gathered into small padded batches by length (the
padding is paid in attention only, never in the matmuls). The two parts of a continuation are merged by their
log-sum-exps (:mod:`.attention`); so is the part over a prompt an earlier call kept. Exact: every token sees exactly
the tokens it sees in a forward of its own sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .packing import pack

BUCKET_OVERHEAD = 64  # one more attention call, in padded tokens, when grouping pieces by length
# a piece this long attends in a call of its own, on its slice of the row (no gather, no pad): the CPU flash
# kernel costs ~45 us a call whatever its size, which a padded bucket shares only among pieces shorter than this
ALONE_TOKENS = 24


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
    ``(offset, length)`` of the pieces that attend within themselves in a call of their own; ``buckets``: per
    attention call of the other such pieces, the flat positions ``[rows, width]`` of its padded batch, the row and
    column of each of its real slots, and where in the row each goes; ``spans``: per prompt piece with continuations,
    ``(offset, length, end)``: the prompt is ``[offset, offset + length)`` and its continuations' tokens
    ``[offset + length, end)``; ``kept_spans[i]``: ``(start, end)``, the tokens continuing kept prompt ``i``."""

    ids: torch.Tensor
    position_ids: torch.Tensor
    offsets: list[int]
    alone: list[tuple[int, int]]
    buckets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    spans: list[tuple[int, int, int]]
    kept_spans: list[tuple[int, int]]

    @property
    def tokens(self) -> int:
        return self.ids.shape[1]

    def to(self, device: torch.device) -> RaggedLayout:
        move = lambda t: t.to(device)  # noqa: E731
        return RaggedLayout(move(self.ids), move(self.position_ids), self.offsets, self.alone,
                            [tuple(map(move, b)) for b in self.buckets], self.spans, self.kept_spans)


def lay_out(pieces: list[Piece]) -> RaggedLayout:
    """The pieces end to end (in order), and the attention's plan over them. A prompt's continuations follow it
    directly, and a kept prompt's continuations one another."""
    offsets, at = [], 0
    for p in pieces:
        if not p.tokens:
            raise ValueError("an empty piece cannot be laid out")
        offsets.append(at)
        at += len(p.tokens)
    ids = torch.tensor([t for p in pieces for t in p.tokens], dtype=torch.long).unsqueeze(0)
    position_ids = torch.cat([torch.arange(p.start, p.start + len(p.tokens)) for p in pieces]).unsqueeze(0)

    ends = [o + len(p.tokens) for o, p in zip(offsets, pieces)]
    spans: dict[int, int] = {}     # prompt piece -> where its continuations end
    kept: dict[int, list[int]] = {}  # kept prompt -> (start, end)
    for i, p in enumerate(pieces):
        if p.prompt is not None and p.kept is not None:
            raise ValueError("a piece continues either a prompt piece or a kept prompt, not both")
        if p.prompt is not None:
            q = pieces[p.prompt]
            if q.prompt is not None or q.kept is not None or p.start != len(q.tokens) or q.start:
                raise ValueError("a continuation must follow a whole prompt piece")
            if offsets[i] != spans.get(p.prompt, ends[p.prompt]):
                raise ValueError("a prompt's continuations must follow it directly, one after another")
            spans[p.prompt] = ends[i]
        if p.kept is not None:
            if p.kept in kept and offsets[i] != kept[p.kept][1]:
                raise ValueError("a kept prompt's continuations must follow one another")
            kept.setdefault(p.kept, [offsets[i], 0])[1] = ends[i]
    if sorted(kept) != list(range(len(kept))):
        raise ValueError("kept prompts are numbered 0, 1, ... in the order the forward is given them")

    own = [i for i, p in enumerate(pieces) if i not in spans]  # the prompts attend within their span's call
    alone = [(offsets[i], len(pieces[i].tokens)) for i in own if len(pieces[i].tokens) >= ALONE_TOKENS]
    short = [i for i in own if len(pieces[i].tokens) < ALONE_TOKENS]
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
        at_row, at_col = real.nonzero(as_tuple=True)
        buckets.append((index, at_row, at_col, index[at_row, at_col]))
    return RaggedLayout(ids, position_ids, offsets, alone, buckets,
                        [(offsets[k], len(pieces[k].tokens), end) for k, end in sorted(spans.items())],
                        [tuple(kept[k]) for k in range(len(kept))])
