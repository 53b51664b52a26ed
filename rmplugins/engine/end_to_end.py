"""A call's sequences and prompt groups run end to end: the scheduler's path with the engine attention.

Which units share a forward (first fit by tokens, largest first, up to the token budget), how one forward's pieces
are laid out (:mod:`.ragged`: a group's prompt once, then each member's continuation; or only the continuations,
attending to a prompt an earlier call kept), and where each sequence's hidden states come back from. What does not
fit one forward (a group larger than the budget, a sequence longer than it) is handed back to the engine's padded
path: a prefix pass, then suffix batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prefix import PrefixGroup
from .ragged import Piece, lay_out
from .shapes import rounded
from .state import CallState


@dataclass
class Unit:
    """A sequence run alone (``what``: its index) or a prefix group (``what``: the group; ``kept``: a prompt an earlier
    call kept, as ``ScoringEngine._kept_prompt`` returns it)."""

    what: int | PrefixGroup
    kept: tuple | None = None

    def size(self, call: CallState) -> int:
        """Tokens it adds to a forward."""
        if isinstance(self.what, int):
            return len(call.uniq[self.what])
        g = self.what
        run_from = self.kept[0] if self.kept is not None else g.prefix_len
        return (0 if self.kept is not None else g.prefix_len) + sum(len(call.uniq[m]) - run_from for m in g.members)


def fill(units: list[Unit], budget: int, call: CallState) -> list[list[Unit]]:
    """Forwards of at most ``budget`` tokens: first fit, largest first."""
    forwards: list[list[Unit]] = []
    room: list[int] = []
    for unit in sorted(units, key=lambda u: u.size(call), reverse=True):
        n = unit.size(call)
        j = next((j for j, r in enumerate(room) if r >= n), None)
        if j is None:
            forwards.append([unit])
            room.append(budget - n)
        else:
            forwards[j].append(unit)
            room[j] -= n
    return forwards


def run_end_to_end(engine, plain: list[int], shared: list[PrefixGroup], call: CallState
                   ) -> tuple[list[int], list[PrefixGroup]]:
    """Run ``plain`` sequences and ``shared`` groups end to end, as many as ``engine.budget()`` tokens hold per
    forward; returns the sequences and groups that do not fit one forward (for the padded path)."""
    budget = engine.budget()
    units = [Unit(i) for i in plain]
    units += [Unit(g, engine._kept_prompt(g, call) if engine._kept.active else None) for g in shared]
    fits = [u for u in units if u.size(call) <= budget]
    rest = [u for u in units if u.size(call) > budget]  # a kept prompt found here: the padded path takes it again
    for forward in fill(fits, budget, call):
        engine._guarded(forward, lambda us: one_forward(engine, us, call), lambda us: sum(u.size(call) for u in us))
    return ([u.what for u in rest if isinstance(u.what, int)],
            [u.what for u in rest if not isinstance(u.what, int)])


def one_forward(engine, units: list[Unit], call: CallState) -> None:
    """One forward of ``units`` end to end; fills ``call.hidden`` and, where prefixes are kept across calls,
    keeps each prompt run here."""
    pieces: list[Piece] = []
    flat_reads: list[tuple[int, list[int]]] = []  # (sequence, the flat position of each position it reads)
    before: dict[int, tuple] = {}  # (p, positions, hidden states) where a sequence reads inside a kept prompt
    prompts: list[tuple[PrefixGroup, int]] = []   # (group, its prompt piece's index)
    kept_kv: list = []
    at = 0
    for unit in units:
        if isinstance(unit.what, int):
            m = unit.what
            pieces.append(Piece(call.uniq[m]))
            flat_reads.append((m, [at + q for q in call.wanted[m]]))
            at += len(call.uniq[m])
            continue
        g = unit.what
        if unit.kept is None:  # the prompt runs here
            p, prompt_at = g.prefix_len, at
            prompts.append((g, len(pieces)))
            pieces.append(Piece(call.uniq[g.members[0]][:p]))
            at += p
            link = {"prompt": len(pieces) - 1}
        else:  # its first p tokens were kept by an earlier call
            engine._used_kept(unit.kept)
            p, kv, inside, hidden = unit.kept
            kept_kv.append(kv)
            link = {"kept": len(kept_kv) - 1}
        for m in g.members:
            if unit.kept is None:
                flat_reads.append((m, [prompt_at + q if q < p else at + q - p for q in call.wanted[m]]))
            else:
                flat_reads.append((m, [at + q - p for q in call.wanted[m] if q >= p]))
                if any(q < p for q in call.wanted[m]):
                    before[m] = (p, inside, hidden)
            if len(call.uniq[m]) > p:
                pieces.append(Piece(call.uniq[m][p:], start=p, **link))
                at += len(call.uniq[m]) - p

    reads = sorted({f for _, flat in flat_reads for f in flat})  # a position inside a prompt: once
    slot = {f: j for j, f in enumerate(reads)}
    filler = rounded(at, engine.budget()) - at if engine.worker.round_shapes else 0
    if filler:  # the row's length on a grid (.shapes): a piece of its own after the rest, never read
        pieces.append(Piece([engine.pad_token_id] * filler))
    layout = lay_out(pieces)
    keep = [(layout.offsets[k], g.prefix_len) for g, k in prompts] if engine._kept.active else []
    hidden, kept = engine.worker.forward_ragged(layout, reads, keep, kept_kv, filler=filler)
    for m, flat in flat_reads:
        h = hidden[torch.as_tensor([slot[f] for f in flat], dtype=torch.long, device=hidden.device)]
        if m in before:  # wanted[m] is sorted: the positions inside the kept prompt come first
            p, inside, h_kept = before[m]
            rows = torch.as_tensor([inside.index(q) for q in call.wanted[m] if q < p], dtype=torch.long,
                                   device=h_kept.device)
            h = torch.cat([h_kept[rows].to(h.device), h])
        call.hidden[m] = h
    if keep:
        limit = engine._keep_limit()
        for (g, _), kv in zip(prompts, kept):
            read_inside = {q: call.hidden[m][j] for m in g.members for j, q in enumerate(call.wanted[m])
                           if q < g.prefix_len}
            inside = sorted(read_inside)
            engine._kept.keep(tuple(call.uniq[g.members[0]][: g.prefix_len]), kv, inside,
                              torch.stack([read_inside[q] for q in inside]) if inside else None, limit)
