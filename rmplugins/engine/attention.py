"""The scoring engine's attention: exact, and only the work a reward model's read-out needs.

The engine switches a supported backbone's attention implementation to ``ENGINE_ATTENTION`` (registered with
transformers' ``AttentionInterface``) for the duration of its own forwards and passes an :class:`AttentionPlan`
through the model's keyword arguments, which transformers hands to the attention function of every layer. Three
things change, none of them the result:

1. **No padding mask.** Rows are right-padded, so in a causal model a real position never attends to padding; with
   no mask SDPA keeps its causal kernel, which skips the masked half of the work.
2. **Continuations attend to their prompt in place.** Softmax attention over the keys ``[prefix; suffix]`` is the
   merge of two partial attentions weighted by their log-sum-exps (the "cascade" / Hydragen decomposition)::

       out = (exp(lse_p) * out_p + exp(lse_s) * out_s) / (exp(lse_p) + exp(lse_s))

   so each row attends causally within its own suffix (one batched call), and all real positions of a group's
   rows, stacked into one long query sequence, attend to the group's prefix keys/values as the prefix pass left
   them: no per-row copy of the prompt's cache, no padding to the longest prompt, no repeated key/value heads
   (the query heads sharing a key/value head are stacked instead).
3. **The last layer attends only from the positions that are read** (the engine already runs that layer's query
   and output projections and MLP only there); its keys and values are still computed everywhere.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from . import cpu_flash
from .ragged import RaggedLayout

logger = logging.getLogger("rmplugins")
ENGINE_ATTENTION = "rmplugins_engine"
# parity-tested here (tests/test_attention.py); other backbones take the generic path, logged once
CHECKED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2"}
LAYER_TYPES = {"full_attention", "sliding_attention"}  # a window is honoured by the engine (every sequence inside it)
MATH_CHUNK_ELEMENTS = 1 << 26  # score elements per chunk in the portable (non-fused) attention


@dataclass
class AttentionPlan:
    """What the attention of one engine forward needs besides the tokens.

    ``read_layer`` / ``read_rows``: in that layer only the flat positions ``row * width + position`` in
    ``read_rows`` are attended from (the rest of its output is discarded). ``prefix_kv[g][layer]``: keys and values
    ``[1, kv_heads, prefix_len_g, head_dim]`` of the prefix groups of a suffix forward (or of the kept prompts of a
    ``ragged`` one), and ``query_rows[g]`` the flat real positions of group ``g``'s rows (empty lists: a forward of
    whole sequences or of prefixes).
    """

    read_layer: int | None = None
    read_rows: torch.Tensor | None = None
    prefix_kv: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)
    query_rows: list[torch.Tensor] = field(default_factory=list)
    ragged: RaggedLayout | None = None  # a forward of pieces laid end to end (:mod:`.ragged`)
    keep: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of ragged pieces whose keys/values
    kept: list[list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=list)  # are copied out, per layer
    merge: Callable | None = None  # a fused merge-and-cast (.fused); None: merge() then cast


def supports_engine_attention(backbone: torch.nn.Module) -> bool:
    """The backbone dispatches attention through transformers' ``AttentionInterface`` (so the function can be
    switched per forward) and is an architecture this was checked on: Llama (3.x RoPE scaling included), Mistral,
    Qwen2, Qwen3 and Qwen3-MoE (q/k norms, applied by the model before the attention function), Gemma-2 (logit
    soft-capping, applied here). Sliding windows (Mistral's, Gemma-2's alternate layers) are handled by the engine:
    it attends in its own way only when every sequence of a call fits in the window, where a window changes
    nothing."""
    config = getattr(backbone, "config", None)
    if config is None or not getattr(backbone, "_supports_attention_backend", False):
        return False
    if getattr(config, "model_type", None) not in CHECKED_MODEL_TYPES:
        return False
    return all(t in LAYER_TYPES for t in getattr(config, "layer_types", None) or [])


_GENERIC_LOGGED: set = set()


def log_generic_path(backbone: torch.nn.Module) -> None:
    """Say once per model type that a causal backbone runs its own (slower) attention."""
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type not in _GENERIC_LOGGED:
        _GENERIC_LOGGED.add(model_type)
        logger.info("%s (model_type %r): the engine runs the model's own attention (masks and per-row cache copies; "
                    "slower): its own attention is checked on %s", type(backbone).__name__, model_type,
                    ", ".join(sorted(CHECKED_MODEL_TYPES)))


@contextmanager
def use_engine_attention(backbone: torch.nn.Module):
    """Within the block the backbone's layers attend with :func:`engine_attention_forward` (and transformers builds
    no mask: a custom implementation gets none)."""
    config = backbone.config
    before = config._attn_implementation
    config._attn_implementation = ENGINE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def soft_capped(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma-2's attention logit soft-capping, ``softcap * tanh(scores / softcap)`` (none when ``softcap`` is
    None)."""
    return scores if not softcap else torch.tanh(scores / softcap) * softcap


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, causal: bool, scale: float,
                       fused: bool | None = None, softcap: float | None = None,
                       key_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(softcap(q k^T * scale)) v`` and its log-sum-exp (float32), for ``[batch, heads, length, head_dim]``
    queries and ``[batch, kv_heads, length, head_dim]`` keys/values (grouped-query: each key/value head serves
    ``heads // kv_heads`` consecutive query heads; ``causal``: query ``i`` sees keys ``<= i``, aligned top-left as
    in SDPA: with more queries than keys, those past the last key see every key).

    On CPU PyTorch's fused flash kernel returns both (and reads grouped heads in place, where a probe found it
    does so right: :mod:`.cpu_flash`); elsewhere, with ``fused=False`` and with soft-capping (which the fused
    kernel lacks) the math runs in float32 chunks of queries over repeated key/value heads. ``key_count``: only the
    first ``key_count`` keys are attended to (the rest pad the keys to the kernel's vector width,
    :func:`padded_keys`)."""
    if fused is None:
        fused = query.device.type == "cpu"
    k_len = key.shape[-2]
    hidden_keys = key_count is not None and key_count < k_len
    how = cpu_flash.verdict(query.dtype) if fused and not softcap else cpu_flash.MATH
    if how != cpu_flash.GROUPED:  # each key/value head repeated for its query heads (a copy)
        rep = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, rep), repeat_kv(value, rep)
    if how != cpu_flash.MATH:  # the kernel, as the probe found it reads them (checked once per dtype)
        mask = _hidden_keys_mask(key_count, k_len, query.dtype, query.device) if hidden_keys else None
        return cpu_flash.flash(query, key, value, causal, mask, scale)
    q_len = query.shape[-2]
    chunk = max(1, MATH_CHUNK_ELEMENTS // max(1, query.shape[0] * query.shape[1] * k_len))
    outs, lses = [], []
    for start in range(0, q_len, chunk):
        q = query[..., start: start + chunk, :].float()
        scores = soft_capped(torch.matmul(q, key.float().transpose(-1, -2)) * scale, softcap)
        if causal:
            rows = torch.arange(start, start + q.shape[-2], device=query.device).unsqueeze(1)
            scores = scores.masked_fill(torch.arange(k_len, device=query.device) > rows, float("-inf"))
        if hidden_keys:
            scores[..., key_count:] = float("-inf")
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), value.float()).to(query.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


# The CPU flash kernel's softmax runs over a row of scores 16 floats a vector step and exponentiates what is left of
# the row one score at a time (std::exp): keys a multiple of 16 long run 10-40 % faster (700 queries over 300 keys
# in bf16: 2.3 ms against 2.7; 83 causal queries over their own 83 keys 0.21 against 0.29; float32 5-10 %).
KEY_BLOCK = 16


def padded_keys(length: int, room: int) -> int:
    """How many keys to hand the fused CPU kernel for ``length`` real ones when ``room`` lie in the row from the
    first: ``length`` rounded up to :data:`KEY_BLOCK` where the row holds that many, else ``length`` (a shorter
    padding would keep a tail and add a mask). The keys past ``length`` are the row's next tokens, hidden from every
    query (by causality or ``key_count``): they cost a few scores, never a result."""
    whole = -(-length // KEY_BLOCK) * KEY_BLOCK
    return whole if whole <= room else length


_masks: dict[tuple, torch.Tensor] = {}


def _hidden_keys_mask(count: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An additive mask ``[1, 1, 1, length]``: 0 for the first ``count`` keys, -inf for the rest (cached: a few
    shapes per model)."""
    key = (count, length, dtype, device)
    if key not in _masks:
        if len(_masks) > 4096:
            _masks.clear()
        mask = torch.zeros(1, 1, 1, length, dtype=dtype, device=device)
        mask[..., count:] = float("-inf")
        _masks[key] = mask
    return _masks[key]


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Two partial attentions ``[n, heads, head_dim]`` over disjoint key sets, with their log-sum-exps
    ``[n, heads]``, merged into the attention over the union (float32)."""
    top = torch.maximum(lse_a, lse_b)
    w_a, w_b = torch.exp(lse_a - top).unsqueeze(-1), torch.exp(lse_b - top).unsqueeze(-1)
    return (out_a.float() * w_a + out_b.float() * w_b) / (w_a + w_b)


def _over_prefix(flat_q: torch.Tensor, rows: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
                 scale: float, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries ``flat_q[rows]`` (``[n, heads, dim]``) over one prefix's keys/values, stacked per key/value head:
    ``[n, heads, dim]`` and log-sum-exps ``[n, heads]``."""
    n, heads, dim = rows.numel(), flat_q.shape[1], flat_q.shape[2]
    kv_heads = prefix_k.shape[1]
    rep = heads // kv_heads
    q = flat_q.index_select(0, rows).view(n, kv_heads, rep, dim).permute(1, 2, 0, 3).reshape(1, kv_heads, rep * n, dim)
    out, lse = attention_with_lse(q, prefix_k, prefix_v, causal=False, scale=scale, softcap=softcap)
    out = out.view(kv_heads, rep, n, dim).permute(2, 0, 1, 3).reshape(n, heads, dim)
    return out, lse.view(kv_heads, rep, n).permute(2, 0, 1).reshape(n, heads)


def _read_rows_only(query, key, value, plan: AttentionPlan, scale: float, softcap: float | None) -> torch.Tensor:
    """The last layer: attention from ``plan.read_rows`` only (each over its own row up to its position, plus its
    group's prefix in a suffix forward); zeros elsewhere. A few queries per row: plain float32 math."""
    batch, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads
    out = query.new_zeros(batch * width, heads, dim)
    reads = plan.read_rows
    if reads is None or reads.numel() == 0:
        return out.view(batch, width, heads, dim)
    n = reads.numel()
    row, pos = reads // width, reads % width
    flat_q = query.transpose(1, 2).reshape(batch * width, heads, dim)
    q = flat_q.index_select(0, reads).view(n, kv_heads, rep, dim).float()
    k = key.index_select(0, row).float()                                   # [n, kv_heads, width, dim]
    v = value.index_select(0, row).float()
    scores = soft_capped(torch.matmul(q, k.transpose(-1, -2)) * scale, softcap)  # [n, kv_heads, rep, width]
    hidden = torch.arange(width, device=query.device).view(1, 1, 1, width) > pos.view(n, 1, 1, 1)
    scores = scores.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    own = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), v).reshape(n, heads, dim)
    lse = lse.reshape(n, heads)
    if plan.prefix_kv:
        slot = torch.full((batch * width,), -1, dtype=torch.long, device=query.device)
        slot[reads] = torch.arange(n, device=query.device)
        for rows, kv in zip(plan.query_rows, plan.prefix_kv):
            mine = rows[slot[rows] >= 0]                                   # the group's read positions
            if mine.numel() == 0:
                continue
            at = slot[mine]
            out_p, lse_p = _over_prefix(flat_q, mine, *kv[plan.read_layer], scale, softcap)
            own[at] = merge(own[at], lse[at], out_p, lse_p)
    out[reads] = own.to(out.dtype)
    return out.view(batch, width, heads, dim)


def engine_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             rmplugins_plan: AttentionPlan | None = None, **kwargs):
    """Attention of one layer of an engine forward: ``query`` ``[batch, heads, width, head_dim]``, ``key`` /
    ``value`` ``[batch, kv_heads, width, head_dim]`` (a prefix pass's cache has already stored them); returns
    ``[batch, width, heads, head_dim]`` as transformers' attention functions do."""
    plan = rmplugins_plan
    if plan is None:
        raise RuntimeError("rmplugins: the engine attention was called without its AttentionPlan; it is only meant "
                           "for the scoring engine's own forwards")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("rmplugins: the engine attention does not implement attention sinks")
    softcap = kwargs.get("softcap")
    batch, heads, width, dim = query.shape
    scale = scaling if scaling is not None else dim ** -0.5
    if plan.ragged is not None:
        return ragged_attention(query, key, value, plan, scale, softcap, module.layer_idx), None
    if module.layer_idx == plan.read_layer:
        return _read_rows_only(query, key, value, plan, scale, softcap), None
    if not plan.prefix_kv:  # whole sequences or prefixes: causal, right-padded, no mask needed
        if not softcap:
            return sdpa_attention_forward(module, query, key, value, None, dropout=0.0, scaling=scale, is_causal=True)
        out, _ = attention_with_lse(query, key, value, causal=True, scale=scale, softcap=softcap)
        return out.transpose(1, 2).contiguous(), None

    # Each row within its own suffix (causal), then each group's real positions over its prefix, merged.
    out_s, lse_s = attention_with_lse(query, key, value, causal=True, scale=scale, softcap=softcap)
    out = out_s.transpose(1, 2).reshape(batch * width, heads, dim)  # out_s is not used again: updated in place
    lse_s = lse_s.transpose(1, 2).reshape(batch * width, heads)
    flat_q = query.transpose(1, 2).reshape(batch * width, heads, dim)
    for rows, kv in zip(plan.query_rows, plan.prefix_kv):
        out_p, lse_p = _over_prefix(flat_q, rows, *kv[module.layer_idx], scale, softcap)
        merged = merge(out.index_select(0, rows), lse_s.index_select(0, rows), out_p, lse_p)
        out.index_copy_(0, rows, merged.to(out.dtype))
    return out.view(batch, width, heads, dim), None


def ragged_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: AttentionPlan, scale: float,
                     softcap: float | None, layer: int) -> torch.Tensor:
    """Attention of layer ``layer`` over pieces laid end to end (``[1, heads, T, head_dim]``, :mod:`.ragged`).
    A prompt and its continuations (a span) take one causal call of the span's queries over the prompt's keys;
    every other piece, and each continuation within itself, attends causally over its own tokens (a long one on its
    slice of the row, short ones in length buckets, one fused call each, padding only there); a continuation's two
    parts, and its part over a prompt kept by an earlier call (``plan.prefix_kv``), are merged by log-sum-exp.
    Every call reads the row in place but the buckets. The last layer (``plan.read_layer``) attends from the read
    positions only when there are no more of them than pieces. Returns ``[1, T, heads, head_dim]``."""
    layout = plan.ragged
    _, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    out = query.new_empty(length, heads, dim)
    if layer == plan.read_layer and plan.read_rows is not None and plan.read_rows.numel() <= len(layout.offsets):
        _ragged_reads_only(query, key, value, plan, scale, softcap, layer, out)
        return out.unsqueeze(0)
    lse_all = query.new_empty(length, heads, dtype=torch.float32) if layout.spans or layout.kept_spans else None

    # the fused CPU kernel is handed the row's keys up to a multiple of KEY_BLOCK (the tokens after a piece, hidden)
    pad = query.device.type == "cpu" and not softcap

    def attend(q_from, q_to, keys, values, causal, key_count=None):  # the row's queries [q_from, q_to) over keys
        o, lse = attention_with_lse(query[:, :, q_from: q_to], keys, values, causal=causal, scale=scale,
                                    softcap=softcap, key_count=key_count)
        return o[0].transpose(0, 1), lse[0].transpose(0, 1)  # [n, heads, dim], [n, heads] (views)

    def own(start, n):  # the row's keys/values [start, start + n), on CPU padded to the kernel's vector width
        stop = start + (padded_keys(n, length - start) if pad else n)
        return key[:, :, start: stop], value[:, :, start: stop]

    def merge_into(start, stop, o, lse):
        mine = out[start: stop], lse_all[start: stop], o, lse
        out[start: stop] = plan.merge(*mine) if plan.merge is not None else merge(*mine).to(out.dtype)

    for offset, n in layout.alone:  # causal, top-left: query i sees keys <= i, never the padding past the piece
        out[offset: offset + n], lse = attend(offset, offset + n, *own(offset, n), True)
        if lse_all is not None:
            lse_all[offset: offset + n] = lse
    flat_q = query[0].transpose(0, 1)                      # [T, heads, dim] (views: no copy)
    flat_k, flat_v = key[0].transpose(0, 1), value[0].transpose(0, 1)
    for index, at_row, at_col, dest in layout.buckets:
        rows, width = index.shape
        at = index.reshape(-1)

        def batch(flat, n_heads):
            return flat.index_select(0, at).view(rows, width, n_heads, dim).transpose(1, 2)

        o, lse = attention_with_lse(batch(flat_q, heads), batch(flat_k, kv_heads), batch(flat_v, kv_heads),
                                    causal=True, scale=scale, softcap=softcap)
        out.index_copy_(0, dest, o[at_row, :, at_col])         # the real slots: [n, heads, dim], one gather
        if lse_all is not None:
            lse_all.index_copy_(0, dest, lse[at_row, :, at_col])
    for offset, n, end in layout.spans:  # top-left causal: the prompt within itself, continuations over all of it
        o, lse = attend(offset, end, *own(offset, n), True, key_count=n)  # (and never over the keys past it)
        out[offset: offset + n] = o[:n]
        merge_into(offset + n, end, o[n:], lse[n:])
    for i, (start, stop) in enumerate(layout.kept_spans):
        merge_into(start, stop, *attend(start, stop, *plan.prefix_kv[i][layer], False))
    _keep(plan, key, value)
    return out.unsqueeze(0)


def _keep(plan: AttentionPlan, key: torch.Tensor, value: torch.Tensor) -> None:
    """Copy out the keys/values of the prompts a later call will continue."""
    if plan.keep:
        plan.kept.append([(key[:, :, o: o + n].clone(), value[:, :, o: o + n].clone()) for o, n in plan.keep])


def _ragged_reads_only(query, key, value, plan: AttentionPlan, scale: float, softcap: float | None, layer: int,
                       out: torch.Tensor) -> None:
    """The last layer of a ragged forward, attended from the read positions only (``plan.read_rows``, at most one
    per piece; the rest of ``out`` is never read): each read position over its own piece up to itself (one query,
    so nothing to mask), its prompt's part (one call per prompt span or kept prompt for all its reads) merged in."""
    layout = plan.ragged
    reads = plan.read_rows.tolist()
    piece = [bisect.bisect_right(layout.offsets, f) - 1 for f in reads]
    lse = query.new_empty(len(reads), query.shape[1], dtype=torch.float32)
    for j, (f, i) in enumerate(zip(reads, piece)):
        start = layout.offsets[i]
        o, o_lse = attention_with_lse(query[:, :, f: f + 1], key[:, :, start: f + 1], value[:, :, start: f + 1],
                                      causal=False, scale=scale, softcap=softcap)
        out[f], lse[j] = o[0, :, 0], o_lse[0, :, 0]
    parts = [((offset + n, end), (key[:, :, offset: offset + n], value[:, :, offset: offset + n]))
             for offset, n, end in layout.spans]
    parts += [(span, plan.prefix_kv[k][layer]) for k, span in enumerate(layout.kept_spans)]
    for (begin, end), (prompt_k, prompt_v) in parts:
        mine = [j for j, f in enumerate(reads) if begin <= f < end]
        if not mine:
            continue
        at = torch.as_tensor([reads[j] for j in mine], dtype=torch.long, device=query.device)
        o, lse_p = attention_with_lse(query.index_select(2, at), prompt_k, prompt_v, causal=False, scale=scale,
                                      softcap=softcap)
        rows = torch.as_tensor(mine, dtype=torch.long, device=query.device)
        both = out.index_select(0, at), lse.index_select(0, rows), o[0].transpose(0, 1), lse_p[0].transpose(0, 1)
        out.index_copy_(0, at, merge(*both).to(out.dtype))  # a few rows: eager (no graph of their own to compile)
    _keep(plan, key, value)


AttentionInterface.register(ENGINE_ATTENTION, engine_attention_forward)
