"""The scoring engine: runs a backbone over many token sequences and returns the final hidden states at the
positions each family's head reads.

Every family reduces to "hidden states at a few positions of each sequence, then a small head", so one engine
serves them all, and it aims at the floor of the work: each distinct token prefix processed once.

- Identical sequences run once.
- Causal backbones: sequences sharing a token prefix (the n samples of one prompt, every pair-PM comparison of a
  tournament behind its ``[CONTEXT] ... [RESPONSE A]``) are grouped (:mod:`rmplugins.prefix`); the prefix runs
  once, and the rest of each sequence runs against its cached keys/values. Grouping is on token ids, so a template
  or BPE merge that breaks the text prefix only shortens (or removes) the shared part: no sequence ever sees other
  tokens than in a plain forward.
- Micro-batches are length-sorted, capped by a token budget (padded tokens) rather than a batch size, and cut
  where padding would cost more than another forward; results come back in the caller's order. Without an
  explicit budget it is derived from free device memory on CUDA.
- ``keep_prefixes()``: within the block, prefix caches outlive their call (the rounds of a tournament share the
  context), bounded and released on exit. ``prompt_cache_tokens``: the same for good, sequences run alone
  included (a server's samples of one prompt, arriving in different batches, run the prompt once), bounded in
  tokens, least recently used dropped first.
- Out of memory: the micro-batch is split in two and retried (logged), and the budget lowered for later calls.
- Attention (:mod:`rmplugins.attention`, Llama/Mistral, CPU by default): no padding mask, suffixes attend to their
  prefix's cache in place, the last layer attends only from read positions. Elsewhere the model's own attention
  runs with masks and each suffix row gets a copy of its prefix's cache.
"""

from __future__ import annotations

import gc
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .attention import AttentionPlan, supports_engine_attention, use_engine_attention
from .packing import pack
from .prefix import PrefixGroup, plan_groups, unique_token_floor
from .read_positions import last_layer_row_modules, reading_only

logger = logging.getLogger("rmplugins")

DEFAULT_CPU_TOKEN_BUDGET = 4096
MIN_TOKEN_BUDGET = 256
MAX_TOKEN_BUDGET = 131072
GPU_MEMORY_FRACTION = 0.6   # of the free memory given to one micro-batch's activations and caches
CPU_MEMORY_FRACTION = 0.25  # of the free RAM, on CPU (shared with everything else the machine runs)
WINDOW_FACTOR = 8           # prefix caches kept alive at once: WINDOW_FACTOR x budget tokens
PROMPT_CACHE_MEMORY_FRACTION = 0.1  # the server's default prompt cache: a tenth of the memory free at start
MAX_PROMPT_CACHE_TOKENS = 1 << 20
KEEP_FACTOR = 8             # prefix caches kept across calls (keep_prefixes): at most KEEP_FACTOR x budget tokens
CPU_FORWARD_OVERHEAD = 64   # one more forward, in padded-token equivalents, when choosing micro-batches
GPU_FORWARD_OVERHEAD = 2048


@dataclass
class EngineStats:
    """Token accounting, cumulative over calls (``engine.stats.reset()`` to start again).

    ``tokens_requested``: the sum of the sequence lengths, what one forward per sequence processes;
    ``tokens_floor``: the unique-token floor (each distinct prefix once, see ``prefix.unique_token_floor``);
    ``tokens_processed``: real tokens that went through the backbone; ``tokens_padded``: rows x width summed over
    forwards, the compute actually spent (padding included); ``prefix_cache_hits``: prefixes taken from an earlier
    call's cache (``keep_prefixes`` or the prompt cache) instead of being run again, ``tokens_from_cache`` their
    tokens.
    """

    calls: int = 0
    sequences: int = 0
    forwards: int = 0
    tokens_requested: int = 0
    tokens_floor: int = 0
    tokens_processed: int = 0
    tokens_padded: int = 0
    prefix_groups: int = 0
    prefix_members: int = 0
    oom_splits: int = 0
    prefix_cache_hits: int = 0
    tokens_from_cache: int = 0

    def reset(self) -> None:
        for name in asdict(self):
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class KeptPrefix:
    """A prefix's keys/values ``[1, kv_heads, length, head_dim]`` per layer, and its final hidden states at the
    positions that were read when it ran."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    hidden: dict[int, torch.Tensor]


@dataclass
class CallState:
    """One ``hidden_at`` call: the distinct sequences, the sorted positions read in each, their hidden states as
    they are computed; and, for the window of prefix groups being run, each group's prefix cache and the hidden
    states read inside the prefix."""

    uniq: list[list[int]]
    wanted: list[list[int]]
    hidden: list[torch.Tensor | None]
    caches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    prefix_hidden: dict[int, tuple[list[int], torch.Tensor | None]] = field(default_factory=dict)


class KeptPrefixes:
    """Prefix caches kept across calls: within ``ScoringEngine.keep_prefixes`` blocks (cleared when the outermost
    exits), or for good as the engine's prompt cache (``prompt_cache_tokens``). Least recently used dropped first,
    bounded in tokens. A kept sequence serves any later one that starts with the same tokens for as long as they
    agree (its keys/values sliced there), found through a hash chain over blocks of ``BLOCK`` tokens."""

    BLOCK = 16

    def __init__(self):
        self.depth = 0           # open keep_prefixes blocks
        self.limit = 0           # prompt cache: tokens kept for good (0: off)
        self.suspended = 0       # deterministic calls: nothing kept or taken
        self.tokens = 0          # tokens held
        self._store: OrderedDict[tuple[int, ...], KeptPrefix] = OrderedDict()
        self._index: dict[int, tuple[int, ...]] = {}  # chain hash of a block-aligned prefix -> newest kept holder

    @property
    def active(self) -> bool:
        return (self.depth > 0 or self.limit > 0) and not self.suspended

    def __iter__(self):
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()
        self._index.clear()
        self.tokens = 0

    def _chain(self, tokens) -> list[int]:
        """Hashes of tokens[:BLOCK], tokens[:2*BLOCK], ... (each block chained on the hash before it)."""
        out, h = [], 0
        for start in range(0, len(tokens) - self.BLOCK + 1, self.BLOCK):
            h = hash((h, tuple(tokens[start: start + self.BLOCK])))
            out.append(h)
        return out

    def keep(self, tokens: tuple[int, ...], kv, positions: list[int], hidden: torch.Tensor, limit: int) -> None:
        """Copy a prefix's cache out of its batch (so the batch can be freed); drop the oldest beyond ``limit``
        tokens (the newest is always kept)."""
        if tokens in self._store:
            self._drop(tokens)
        self._store[tokens] = KeptPrefix([(k.clone(), v.clone()) for k, v in kv],
                                         {q: hidden[i].clone() for i, q in enumerate(positions)})
        self.tokens += len(tokens)
        for h in self._chain(tokens):
            self._index[h] = tokens
        while self.tokens > limit and len(self._store) > 1:
            self._drop(next(iter(self._store)))

    def _drop(self, tokens: tuple[int, ...]) -> None:
        del self._store[tokens]
        self.tokens -= len(tokens)
        for h in self._chain(tokens):
            if self._index.get(h) == tokens:
                del self._index[h]

    def longest(self, seq: Sequence[int], max_len: int) -> tuple[tuple[int, ...], int] | None:
        """(kept tokens, n): the kept sequence agreeing with ``seq`` on the most leading tokens, n of them
        (at least one block, at most ``max_len``); None when none agrees on a whole block."""
        best = None
        for j, h in enumerate(self._chain(seq[:max_len]), start=1):
            holder = self._index.get(h)
            if holder is None:
                break
            best = (holder, j * self.BLOCK)
        if best is None:
            return None
        holder, n = best
        if tuple(seq[:n]) != holder[:n]:  # a hash collision: take nothing rather than risk other tokens
            return None
        limit = min(max_len, len(holder), len(seq))
        while n < limit and seq[n] == holder[n]:
            n += 1
        return holder, n

    def get(self, tokens: tuple[int, ...]) -> KeptPrefix:
        return self._store[tokens]

    def used(self, tokens: tuple[int, ...]) -> None:
        self._store.move_to_end(tokens)


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes one token's keys and values take in every layer."""
    h = int(getattr(config, "hidden_size", 4096))
    heads = int(getattr(config, "num_attention_heads", 32))
    head_dim = int(getattr(config, "head_dim", None) or h // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * head_dim
    return 2 * int(getattr(config, "num_hidden_layers", 32)) * kv * torch.empty(0, dtype=dtype).element_size()


def activation_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Rough peak bytes one token costs in a forward: the transient activations of one layer (residual, q/k/v,
    attention output, the MLP's gate/up/act) plus its keys/values in every layer (the prefix cache)."""
    h = int(getattr(config, "hidden_size", 4096))
    inter = int(getattr(config, "intermediate_size", None) or 4 * h)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return itemsize * (6 * h + 3 * inter) + kv_bytes_per_token(config, dtype)


class ScoringEngine:
    """``hidden_at(sequences, positions)`` -> one ``[len(positions[i]), hidden]`` tensor per sequence.

    ``backbone`` is a transformers base model (``LlamaModel``, ``MistralModel``, ``DebertaV2Model``...) whose
    output ``last_hidden_state`` already includes the final norm. Positions may be negative (``-1`` = last).
    ``causal=False`` (DeBERTa) disables prefix reuse: every token sees the whole sequence there.

    ``engine_attention``: True runs the backbone's attention through :mod:`rmplugins.attention` (no padding mask,
    suffixes attending to their prefix's keys/values in place, the last layer attending only from read
    positions); False uses the model's own attention with masks and gives each suffix row its own copy of its
    prefix's cache (a plain ``DynamicCache``: works with any backbone that takes one). None (default): True on CPU
    for the architectures it was checked on (Llama, Mistral), False elsewhere (not yet measured on GPU).
    """

    def __init__(self, backbone: torch.nn.Module, pad_token_id: int, *, causal: bool = True,
                 token_budget: int | None = None, prefix_reuse: bool = True,
                 engine_attention: bool | None = None):
        self.backbone = backbone
        self.pad_token_id = int(pad_token_id)
        self.causal = causal
        self.token_budget = token_budget
        self.prefix_reuse = prefix_reuse and causal
        supported = causal and supports_engine_attention(backbone)
        if engine_attention and not supported:
            raise ValueError(f"engine_attention=True is not available for {type(backbone).__name__} (checked on "
                             "causal Llama and Mistral backbones); leave it unset")
        if engine_attention is None:
            engine_attention = supported and self.device.type == "cpu"
        self.engine_attention = bool(engine_attention)
        self._attend_in_engine = False  # per call: engine_attention, unless a sliding window is shorter
        self.stats = EngineStats()
        self._oom_cap: int | None = None  # lowered after an out-of-memory error
        self._read_modules = last_layer_row_modules(backbone) if causal else None
        self._lock = threading.Lock()  # one forward at a time: the last layer is patched during a forward
        self._kept = KeptPrefixes()

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def config(self):
        return getattr(self.backbone, "config", None)

    # ---------------------------------------------------------------- budget and packing
    def budget(self) -> int:
        """Padded tokens per forward: ``token_budget`` if given, else from the memory free now; never above a
        budget that ran out of memory before."""
        budget = self.token_budget or self._auto_budget()
        return min(budget, self._oom_cap) if self._oom_cap else budget

    def _free_memory(self) -> int:
        """Bytes free now where the model runs: the device's on CUDA, RAM elsewhere."""
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        import psutil

        return psutil.virtual_memory().available

    def _auto_budget(self) -> int:
        """What one forward's activations and prefix caches may take (``activation_bytes_per_token``): a share of
        the device's free memory on CUDA; of the free RAM elsewhere, at most 4096 tokens there (larger forwards
        are not faster on CPU and cost memory: ``benchmarks/bench_curves.py``, token budget)."""
        cuda = self.device.type == "cuda"
        fraction, cap = (GPU_MEMORY_FRACTION, MAX_TOKEN_BUDGET) if cuda else (CPU_MEMORY_FRACTION,
                                                                              DEFAULT_CPU_TOKEN_BUDGET)
        per_token = activation_bytes_per_token(self.config, next(self.backbone.parameters()).dtype)
        budget = int(self._free_memory() * fraction / per_token) // 256 * 256
        return max(MIN_TOKEN_BUDGET, min(cap, budget))

    def _pack(self, items: list, width: Callable, extra: Callable | None = None) -> list[list]:
        """:func:`rmplugins.packing.pack` with this engine's budget and per-forward overhead."""
        overhead = GPU_FORWARD_OVERHEAD if self.device.type == "cuda" else CPU_FORWARD_OVERHEAD
        return pack(items, width, self.budget(), overhead, extra)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into length-sorted micro-batches of at most ``budget()`` padded tokens."""
        return self._pack(list(range(len(lengths))), lambda i: lengths[i])

    # ---------------------------------------------------------------- public entry point
    @torch.inference_mode()
    def hidden_at(self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], *,
                  prefix_reuse: bool | None = None) -> list[torch.Tensor]:
        """Hidden states at ``positions[i]`` of ``sequences[i]``, in the caller's order. ``prefix_reuse=False``
        forces plain micro-batches (each sequence run whole) for this call."""
        with self._lock:
            return self._hidden_at(sequences, positions, prefix_reuse)

    @contextmanager
    def keep_prefixes(self):
        """Within the block, the keys/values of shared prefixes outlive the call that computed them, so later calls
        starting with the same tokens (the rounds of a pair-PM tournament, all behind one ``[CONTEXT]``) run only
        what follows. Bounded to ``KEEP_FACTOR x budget`` tokens (least recently used dropped first); released
        when the outermost block exits. Results are unchanged: a kept prefix is exactly what a new run computes."""
        with self._lock:
            self._kept.depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._kept.depth -= 1
                if not self._kept.depth and not self._kept.limit:
                    self._kept.clear()

    @property
    def prompt_cache_tokens(self) -> int:
        """The prompt cache: up to this many tokens of sequences run earlier stay cached (keys/values, least
        recently used dropped first), so a later call whose sequences start with the same tokens runs only what
        follows: a server's requests carrying the n samples of one prompt run that prompt once even when they land
        in different batches. 0 (the default) turns it off and frees it. Exact in the token sense (only identical
        leading tokens are reused); like any batching, it moves float results in the last bits."""
        return self._kept.limit

    @prompt_cache_tokens.setter
    def prompt_cache_tokens(self, tokens: int) -> None:
        with self._lock:
            self._kept.limit = max(0, int(tokens))
            if not self._kept.limit and not self._kept.depth:
                self._kept.clear()

    def auto_prompt_cache_tokens(self) -> int:
        """Tokens whose keys/values fit in a tenth of the memory free now (the device's on CUDA, RAM elsewhere),
        at most ``MAX_PROMPT_CACHE_TOKENS``."""
        per_token = kv_bytes_per_token(self.config, next(self.backbone.parameters()).dtype)
        return int(min(MAX_PROMPT_CACHE_TOKENS, self._free_memory() * PROMPT_CACHE_MEMORY_FRACTION // per_token))

    def prompt_cache_info(self) -> dict:
        return {"limit_tokens": self._kept.limit, "held_tokens": self._kept.tokens, "entries": len(self._kept)}

    @contextmanager
    def without_kept_prefixes(self):
        """Within the block nothing is taken from or added to kept prefixes (deterministic scoring: a row's
        numbers must not depend on what ran before it)."""
        with self._lock:
            self._kept.suspended += 1
        try:
            yield self
        finally:
            with self._lock:
                self._kept.suspended -= 1

    def _hidden_at(self, sequences, positions, prefix_reuse) -> list[torch.Tensor]:
        if len(sequences) != len(positions):
            raise ValueError("one list of positions per sequence is needed")
        if not sequences:
            return []
        uniq: list[list[int]] = []
        wanted: list[set[int]] = []
        owner: list[int] = []
        index: dict[tuple[int, ...], int] = {}
        normalised = []
        for seq, pos in zip(sequences, positions):
            seq = [int(t) for t in seq]
            if not seq:
                raise ValueError("cannot score an empty token sequence")
            if any(not -len(seq) <= p < len(seq) for p in pos):
                raise IndexError(f"positions {list(pos)} out of range for a sequence of {len(seq)} tokens")
            pos = [p % len(seq) for p in pos]
            u = index.setdefault(tuple(seq), len(uniq))
            if u == len(uniq):
                uniq.append(seq)
                wanted.append(set())
            wanted[u].update(pos)
            owner.append(u)
            normalised.append(pos)
        wanted_sorted = [sorted(w) for w in wanted]

        st = self.stats
        st.calls += 1
        st.sequences += len(sequences)
        st.tokens_requested += sum(len(s) for s in sequences)
        st.tokens_floor += unique_token_floor(uniq) if self.causal else sum(len(s) for s in uniq)

        # The engine attention ignores a sliding window: only used when the window covers every sequence.
        self._attend_in_engine = self.engine_attention and self._window_covers(uniq)
        reuse = self.prefix_reuse if prefix_reuse is None else (prefix_reuse and self.causal)
        if reuse and not self._prefix_reuse_possible(uniq):
            reuse = False
        groups = plan_groups(uniq) if reuse else [PrefixGroup(0, [i]) for i in range(len(uniq))]
        if reuse and self._kept.limit and not self._kept.suspended:
            # Prompt cache: a sequence on its own runs as a "prefix" of its full length, so its keys/values are kept
            # for later calls, or is served from what an earlier call kept.
            groups = [g if g.prefix_len else PrefixGroup(len(uniq[g.members[0]]), g.members) for g in groups]
        call = CallState(uniq, wanted_sorted, [None] * len(uniq))
        self._run_plain([g.members[0] for g in groups if g.prefix_len == 0], call)
        shared = [g for g in groups if g.prefix_len > 0]
        if shared:
            st.prefix_groups += len(shared)
            st.prefix_members += sum(len(g.members) for g in shared)
            self._run_shared(shared, call)
        hidden = call.hidden

        out = []
        for u, pos in zip(owner, normalised):
            rows = [wanted_sorted[u].index(p) for p in pos]
            out.append(hidden[u][torch.as_tensor(rows, dtype=torch.long, device=hidden[u].device)])
        return out

    def _prefix_reuse_possible(self, seqs: list[list[int]]) -> bool:
        """The backbone must take a cache and explicit positions; a sliding window (Mistral) must cover every
        sequence, since the cache built here is a plain full-attention one."""
        params = inspect.signature(self.backbone.forward).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_kwargs and not {"past_key_values", "position_ids"} <= set(params):
            return False
        if not self._window_covers(seqs):
            logger.debug("prefix reuse off: a sequence is longer than the sliding window (%s)",
                         self.config.sliding_window)
            return False
        return True

    def _window_covers(self, seqs: list[list[int]]) -> bool:
        window = getattr(self.config, "sliding_window", None)
        return not window or max(len(s) for s in seqs) <= int(window) - 1

    # ---------------------------------------------------------------- out-of-memory recovery
    def _guarded(self, rows: list, run: Callable[[list], None], tokens: Callable[[list], int]) -> None:
        """``run(rows)``; on out-of-memory, free the cache, halve the rows and retry each half (logged). One row
        that does not fit raises a clear error."""
        try:
            run(rows)
            return
        except torch.OutOfMemoryError as err:
            if len(rows) == 1:
                raise torch.OutOfMemoryError(
                    f"rmplugins: out of memory scoring a single sequence of {tokens(rows)} tokens (token_budget="
                    f"{self.budget()}); load the model with a smaller max_length=..., a device_map spreading it "
                    "over more GPUs, or free device memory") from err
        # outside the except block, so the failed attempt's tensors (held by the traceback) are released
        self._release_memory()
        size = tokens(rows)
        self._oom_cap = max(MIN_TOKEN_BUDGET, min(self.budget(), size // 2))
        self.stats.oom_splits += 1
        logger.warning("rmplugins: out of memory on a micro-batch of %d sequences (%d padded tokens); split in two "
                       "and retried, token budget lowered to %d", len(rows), size, self._oom_cap)
        half = len(rows) // 2
        self._guarded(rows[:half], run, tokens)
        self._guarded(rows[half:], run, tokens)

    def _release_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- plain micro-batches
    def _run_plain(self, items: list[int], call: CallState) -> None:
        def run(rows: list[int]) -> None:
            outputs = self._forward_whole([call.uniq[i] for i in rows], [call.wanted[i] for i in rows])
            for i, h in zip(rows, outputs):
                call.hidden[i] = h

        def tokens(rows: list[int]) -> int:
            return len(rows) * max(len(call.uniq[i]) for i in rows)

        for batch in self._pack(items, lambda i: len(call.uniq[i])):
            self._guarded(batch, run, tokens)

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        self.stats.forwards += 1
        self.stats.tokens_processed += sum(len(s) for s in seqs)
        self.stats.tokens_padded += len(seqs) * width
        return ids, mask

    @staticmethod
    def _gather(hidden: torch.Tensor, positions: list[list[int]]) -> list[torch.Tensor]:
        """Rows ``positions[r]`` of each ``hidden[r]`` with one index_select over the flattened batch."""
        batch, width, size = hidden.shape
        flat = [r * width + p for r, pos in enumerate(positions) for p in pos]
        picked = hidden.reshape(batch * width, size).index_select(
            0, torch.as_tensor(flat, dtype=torch.long, device=hidden.device))
        return list(picked.split([len(p) for p in positions]))

    def _backbone_forward(self, ids: torch.Tensor, mask: torch.Tensor, read: list[list[int]], *,
              prefix_kv: list | None = None, query_rows: list[torch.Tensor] | None = None, **kwargs):
        """One backbone forward of right-padded rows, of which only positions ``read[r]`` of each row ``r`` are
        used. With the engine attention there is no mask, and a suffix forward passes its groups' prefix caches
        (``prefix_kv``) and each group's flat positions (``query_rows``); otherwise the model's own attention runs
        with ``mask`` (a suffix forward then passes its cache in ``kwargs``)."""
        device = self.device
        with reading_only(self._read_modules, ids.shape[1], read, self.device) as rows:
            if not self._attend_in_engine:
                return self.backbone(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            plan = AttentionPlan(read_layer=None if rows is None else len(self.backbone.layers) - 1, read_rows=rows,
                                 prefix_kv=prefix_kv or [], query_rows=query_rows or [])
            with use_engine_attention(self.backbone):
                return self.backbone(input_ids=ids.to(device), rmplugins_plan=plan, **kwargs)

    def _forward_whole(self, seqs: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        ids, mask = self._pad(seqs)
        kwargs = {"use_cache": False} if self.causal else {}
        out = self._backbone_forward(ids, mask, positions, **kwargs)
        return self._gather(out.last_hidden_state, positions)

    # ---------------------------------------------------------------- shared prefixes
    def _run_shared(self, groups: list[PrefixGroup], call: CallState) -> None:
        """Per window of groups: one pass over the prefixes (batched, keeping their keys/values), then the
        suffixes of all members, length-sorted across groups, each row attending to its group's cache."""
        windows, current, size = [], [], 0
        for g in sorted(groups, key=lambda g: g.prefix_len, reverse=True):
            if current and size + g.prefix_len > WINDOW_FACTOR * self.budget():
                windows.append(current)
                current, size = [], 0
            current.append(g)
            size += g.prefix_len
        if current:
            windows.append(current)

        for window in windows:
            self._run_window(window, call)

    def _run_window(self, window: list[PrefixGroup], call: CallState) -> None:
        """The prefixes of ``window`` (batched, their keys/values kept; or taken from ``keep_prefixes``), then all its
        members' suffixes."""
        call.caches, call.prefix_hidden = {}, {}
        todo = [k for k in range(len(window))
                if not (self._kept.active and self._take_kept(window, k, call))]

        def run_prefix(batch: list[int]) -> None:
            self._prefix_forward([window[k] for k in batch], batch, call)

        for batch in self._pack(todo, lambda k: window[k].prefix_len):
            self._guarded(batch, run_prefix, lambda b: len(b) * max(window[k].prefix_len for k in b))

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
            self._suffix_forward(batch, window, call)

        # The per-row cache path copies each row's prefix: its attended tokens are bounded too.
        extra = None if self._attend_in_engine else (lambda row: window[row[1]].prefix_len)
        for batch in self._pack(rows, suffix_len, extra):
            self._guarded(batch, run_suffix, lambda b: len(b) * max(suffix_len(r) for r in b))
        call.caches.clear()

    def _prefix_forward(self, groups: list[PrefixGroup], keys: list[int], call: CallState) -> None:
        prefixes = [call.uniq[g.members[0]][: g.prefix_len] for g in groups]
        inside = [sorted({q for m in g.members for q in call.wanted[m] if q < g.prefix_len}) for g in groups]
        ids, mask = self._pad(prefixes)
        out = self._backbone_forward(ids, mask, inside, use_cache=True)
        cache = out.past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        for row, (key, g) in enumerate(zip(keys, groups)):
            p = g.prefix_len
            call.caches[key] = [(k[row: row + 1, :, :p], v[row: row + 1, :, :p]) for k, v in layers]
        for key, pos, h in zip(keys, inside, self._gather(out.last_hidden_state, inside)):
            call.prefix_hidden[key] = (pos, h)
        if self._kept.active:
            limit = max(self._kept.limit, KEEP_FACTOR * self.budget() if self._kept.depth else 0)
            for key, prefix, pos in zip(keys, prefixes, inside):
                self._kept.keep(tuple(prefix), call.caches[key], pos, call.prefix_hidden[key][1], limit)

    # ---------------------------------------------------------------- prefixes kept across calls
    def _take_kept(self, window: list[PrefixGroup], k: int, call: CallState) -> bool:
        """Serve group ``k`` from the kept sequence agreeing longest with its shared tokens (the group's prefix is
        shortened to where they agree; what follows runs with the suffixes; at least one token of each member is
        left to run). False when none agrees on a block, or a position read inside was not kept."""
        g = window[k]
        seq = call.uniq[g.members[0]]
        found = self._kept.longest(seq, min(g.prefix_len, min(len(call.uniq[m]) for m in g.members) - 1))
        if found is None:
            return False
        holder, n = found
        kept = self._kept.get(holder)
        inside = sorted({q for m in g.members for q in call.wanted[m] if q < n})
        if any(q not in kept.hidden for q in inside):
            return False
        self._kept.used(holder)
        window[k] = PrefixGroup(n, g.members)
        call.caches[k] = [(key[:, :, :n], value[:, :, :n]) for key, value in kept.kv]
        call.prefix_hidden[k] = (inside, torch.stack([kept.hidden[q] for q in inside]) if inside else None)
        self.stats.prefix_cache_hits += 1
        self.stats.tokens_from_cache += n
        return True

    def _suffix_forward(self, rows: list[tuple[int, int]], window: list[PrefixGroup], call: CallState) -> None:
        prefix_lens = [window[k].prefix_len for _, k in rows]
        suffixes = [call.uniq[m][p:] for (m, _), p in zip(rows, prefix_lens)]
        after = [[q - p for q in call.wanted[m] if q >= p] for (m, _), p in zip(rows, prefix_lens)]
        ids, suffix_mask = self._pad(suffixes)
        position_ids = torch.as_tensor(prefix_lens).unsqueeze(1) + torch.arange(ids.shape[1]).unsqueeze(0)
        path = self._suffix_in_place if self._attend_in_engine else self._suffix_with_copies
        out = path(rows, suffixes, prefix_lens, call.caches, after, ids, suffix_mask, position_ids.to(self.device))
        for (m, k), p, h_after in zip(rows, prefix_lens, self._gather(out.last_hidden_state, after)):
            before_pos, before_h = call.prefix_hidden[k]
            n_before = sum(1 for q in call.wanted[m] if q < p)
            if n_before == 0:
                call.hidden[m] = h_after
                continue
            rows_before = [before_pos.index(q) for q in call.wanted[m] if q < p]
            h_before = before_h[torch.as_tensor(rows_before, dtype=torch.long, device=before_h.device)]
            call.hidden[m] = torch.cat([h_before.to(h_after.device), h_after])  # wanted[m] is sorted: prefix first

    def _suffix_in_place(self, rows, suffixes, prefix_lens, caches, after, ids, mask, position_ids):
        """Right-padded suffixes with no mask and no cache: each layer attends within each row's suffix (causal) and
        over its group's prefix keys/values as the prefix pass left them (:mod:`rmplugins.attention`)."""
        width = ids.shape[1]
        members: dict[int, list[int]] = {}
        for r, ((_, k), suffix) in enumerate(zip(rows, suffixes)):
            members.setdefault(k, []).extend(r * width + j for j in range(len(suffix)))
        query_rows = [torch.as_tensor(flat, dtype=torch.long, device=self.device) for flat in members.values()]
        return self._backbone_forward(ids, mask, after, prefix_kv=[caches[k] for k in members], query_rows=query_rows,
                          position_ids=position_ids, use_cache=False)

    def _suffix_with_copies(self, rows, suffixes, prefix_lens, caches, after, ids, suffix_mask, position_ids):
        """Each row gets its group's cache (right-padded to the longest prefix of the batch), then one masked
        forward of the suffixes against it: works with any backbone taking a ``DynamicCache``."""
        group_keys = sorted({k for _, k in rows})
        slot = {k: j for j, k in enumerate(group_keys)}
        pmax = max(prefix_lens)
        pick = torch.as_tensor([slot[k] for _, k in rows], dtype=torch.long)
        layers = []
        for layer in range(len(caches[group_keys[0]])):
            ks, vs = [], []
            for k in group_keys:
                key, value = caches[k][layer]
                pad = pmax - key.shape[-2]
                ks.append(F.pad(key, (0, 0, 0, pad)) if pad else key)
                vs.append(F.pad(value, (0, 0, 0, pad)) if pad else value)
            ks, vs = torch.cat(ks), torch.cat(vs)
            layers.append((ks.index_select(0, pick.to(ks.device)), vs.index_select(0, pick.to(vs.device))))

        prefix_mask = (torch.arange(pmax).unsqueeze(0) < torch.as_tensor(prefix_lens).unsqueeze(1)).long()
        mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        return self._backbone_forward(ids, mask, after, position_ids=position_ids,
                          past_key_values=DynamicCache(ddp_cache_data=layers), use_cache=False)
