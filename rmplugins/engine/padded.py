"""The engine's padded path: micro-batches of right-padded rows, and shared prefixes as a prefix pass (keys/values
kept) followed by suffix batches attending to them. It runs every backbone (with the engine attention a suffix attends
to its prefix in place, otherwise each row gets a copy of its prefix's cache), and, with the engine attention, what
does not fit one end-to-end forward (:mod:`.end_to_end`): a group larger than the token budget, a sequence longer
than it.
"""

from __future__ import annotations

import torch

from . import budget as sizes
from .prefix import PrefixGroup
from .state import CallState


def run_plain(engine, items: list[int], call: CallState) -> None:
    """Sequences run whole, in length-sorted micro-batches of at most ``budget()`` padded tokens."""
    def run(rows: list[int]) -> None:
        outputs = engine.worker.forward_whole([call.uniq[i] for i in rows], [call.wanted[i] for i in rows])
        for i, h in zip(rows, outputs):
            call.hidden[i] = h

    def tokens(rows: list[int]) -> int:
        return len(rows) * max(len(call.uniq[i]) for i in rows)

    for batch in engine._pack(items, lambda i: len(call.uniq[i])):
        engine._guarded(batch, run, tokens)


def run_shared(engine, groups: list[PrefixGroup], call: CallState) -> None:
    """Per window of groups: one pass over the prefixes (batched, keeping their keys/values), then the
    suffixes of all members, length-sorted across groups, each row attending to its group's cache."""
    windows, current, size = [], [], 0
    for g in sorted(groups, key=lambda g: g.prefix_len, reverse=True):
        if current and size + g.prefix_len > sizes.WINDOW_FACTOR * engine.budget():
            windows.append(current)
            current, size = [], 0
        current.append(g)
        size += g.prefix_len
    if current:
        windows.append(current)

    for window in windows:
        run_window(engine, window, call)


def run_window(engine, window: list[PrefixGroup], call: CallState) -> None:
    """The prefixes of ``window`` (batched, their keys/values kept; or taken from ``keep_prefixes``), then all its
    members' suffixes."""
    call.caches, call.prefix_hidden = {}, {}
    todo = [k for k in range(len(window))
            if not (engine._kept.active and take_kept(engine, window, k, call))]

    def run_prefix(batch: list[int]) -> None:
        prefix_forward(engine, [window[k] for k in batch], batch, call)

    for batch in engine._pack(todo, lambda k: window[k].prefix_len):
        engine._guarded(batch, run_prefix, lambda b: len(b) * max(window[k].prefix_len for k in b))

    rows = [(m, k) for k, g in enumerate(window) for m in g.members]

    def suffix_len(row):
        return len(call.uniq[row[0]]) - window[row[1]].prefix_len

    for m, k in rows:  # a sequence run whole as its own prefix (prompt cache): read inside it
        if suffix_len((m, k)) == 0:
            pos, h = call.prefix_hidden[k]
            call.hidden[m] = h[torch.as_tensor([pos.index(q) for q in call.wanted[m]], dtype=torch.long,
                                               device=h.device)]
    rows = [row for row in rows if suffix_len(row) > 0]

    def run_suffix(batch: list[tuple[int, int]]) -> None:
        suffix_forward(engine, batch, window, call)

    # The per-row cache path copies each row's prefix: its attended tokens are bounded too.
    extra = None if engine.worker.attend_in_engine else (lambda row: window[row[1]].prefix_len)
    for batch in engine._pack(rows, suffix_len, extra):
        engine._guarded(batch, run_suffix, lambda b: len(b) * max(suffix_len(r) for r in b))
    call.caches.clear()


def prefix_forward(engine, groups: list[PrefixGroup], keys: list[int], call: CallState) -> None:
    prefixes = [call.uniq[g.members[0]][: g.prefix_len] for g in groups]
    inside = [sorted({q for m in g.members for q in call.wanted[m] if q < g.prefix_len}) for g in groups]
    kv, hidden = engine.worker.forward_prefixes(prefixes, inside)
    for key, kv_row, pos, h in zip(keys, kv, inside, hidden):
        call.caches[key] = kv_row
        call.prefix_hidden[key] = (pos, h)
    if engine._kept.active:
        limit = engine._keep_limit()
        for key, prefix, pos in zip(keys, prefixes, inside):
            engine._kept.keep(tuple(prefix), call.caches[key], pos, call.prefix_hidden[key][1], limit)


def take_kept(engine, window: list[PrefixGroup], k: int, call: CallState) -> bool:
    """Serve group ``k`` of ``window`` from a kept prompt (:meth:`_kept_prompt`): its prefix becomes the kept
    part, its cache and the hidden states read inside are the kept ones."""
    taken = engine._kept_prompt(window[k], call)
    if taken is None:
        return False
    engine._used_kept(taken)
    n, call.caches[k], inside, hidden = taken
    window[k] = PrefixGroup(n, window[k].members)
    call.prefix_hidden[k] = (inside, hidden)
    return True


def suffix_forward(engine, rows: list[tuple[int, int]], window: list[PrefixGroup], call: CallState) -> None:
    """The suffixes of ``rows`` (member, group) in one forward; each member's hidden states are those read
    inside its prefix followed by those after it."""
    prefix_lens = [window[k].prefix_len for _, k in rows]
    suffixes = [call.uniq[m][p:] for (m, _), p in zip(rows, prefix_lens)]
    after = [[q - p for q in call.wanted[m] if q >= p] for (m, _), p in zip(rows, prefix_lens)]
    hidden_after = engine.worker.forward_suffixes(suffixes, [k for _, k in rows], prefix_lens, call.caches, after)
    for (m, k), p, h_after in zip(rows, prefix_lens, hidden_after):
        before_pos, before_h = call.prefix_hidden[k]
        n_before = sum(1 for q in call.wanted[m] if q < p)
        if n_before == 0:
            call.hidden[m] = h_after
            continue
        rows_before = [before_pos.index(q) for q in call.wanted[m] if q < p]
        h_before = before_h[torch.as_tensor(rows_before, dtype=torch.long, device=before_h.device)]
        call.hidden[m] = torch.cat([h_before.to(h_after.device), h_after])  # wanted[m] is sorted: prefix first
