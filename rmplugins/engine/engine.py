"""The scoring engine's scheduler: runs a backbone over many token sequences and returns the final hidden states at the
positions each family's head reads, aiming at the floor of the work: each distinct token prefix processed once.

- Identical sequences run once. Causal backbones: sequences sharing a token prefix (the n samples of one prompt,
  every pair-PM comparison behind its ``[CONTEXT]``) are grouped (:mod:`.prefix`); the prefix runs once and each
  continuation runs against its keys/values. Grouping is on token ids: a template or BPE merge that breaks the text
  prefix only shortens the shared part, so no sequence ever sees other tokens than in a plain forward.
- With the engine attention, sequences and whole prompt groups run end to end (:mod:`.end_to_end`), as many per
  forward as the token budget (:mod:`.budget`) holds: no padding, every matmul at the floor's token count. What
  does not fit one forward, and every call without the engine attention, takes the padded path (:mod:`.padded`):
  micro-batches (:mod:`.packing`) length-sorted, capped by the budget rather than a batch size, cut where padding
  would cost more than another forward; a prefix pass, then suffix batches. Results come back in the caller's order.
- ``keep_prefixes()`` keeps prefix caches across the calls of a block (a tournament's rounds); the prompt cache
  (``prompt_cache_tokens``) for good (:mod:`.caches`).
- Out of memory: the micro-batch is split in two and retried (logged), and the budget lowered for later calls.
- The forwards themselves are the worker's (:mod:`.worker`), with the engine's own attention (:mod:`.attention`)
  where the backbone was checked, else the model's own attention with masks and per-row cache copies; on CPU with
  the cores other processes leave free (:mod:`.threads`), freed activations kept for the next forward
  (:mod:`.allocator`), and on CPU fused elementwise kernels (:mod:`.fused`) and, in half precision, rows rounded
  to a grid of lengths whose matmul kernels the next call finds built (:mod:`.shapes`), and in bf16 the keys and
  values from one product of their joint weights (:mod:`.projections`).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch

from . import budget as sizes
from .allocator import keep_freed_memory
from .attention import CHECKED_MODEL_TYPES, log_generic_path, supports_engine_attention
from .cache_argument import cache_keyword
from .caches import KeptPrefixes
from .end_to_end import run_end_to_end
from .fused import FusedForwards
from .fused import pays as fused_pays
from .packing import pack
from .padded import run_plain, run_shared
from .prefix import PrefixGroup, keys_and_values_only, plan_groups, unique_token_floor
from .shapes import rounds
from .state import CallState, EngineStats
from .threads import owned_elsewhere, set_threads, thread_counts, threads_that_fit
from .worker import BackboneWorker

logger = logging.getLogger("rmplugins")


class ScoringEngine:
    """``hidden_at(sequences, positions)`` -> one ``[len(positions[i]), hidden]`` tensor per sequence.

    ``backbone`` is a transformers base model (``LlamaModel``, ``MistralModel``, ``DebertaV2Model``...) whose
    output ``last_hidden_state`` already includes the final norm. Positions may be negative (``-1`` = last).
    ``causal=False`` (DeBERTa) disables prefix reuse: every token sees the whole sequence there.

    ``engine_attention``: True runs the backbone's attention through :mod:`.attention` (no padding mask,
    suffixes attending to their prefix's keys/values in place, the last layer attending only from read
    positions); False uses the model's own attention with masks and gives each suffix row its own copy of its
    prefix's cache (a plain ``DynamicCache``: works with any backbone that takes one). None (default): True on CPU
    for the architectures it was checked on (Llama, Mistral), False elsewhere (not yet measured on GPU).

    It is the transformers backend of every family (``name = "transformers"``): the families call ``hidden_at``
    and apply their heads; :class:`rmplugins.vllm.backend.VLLMBackend` is the other backend.
    """

    name = "transformers"

    def __init__(self, backbone: torch.nn.Module, pad_token_id: int, *, causal: bool = True,
                 token_budget: int | None = None, prefix_reuse: bool = True,
                 engine_attention: bool | None = None):
        self.backbone = backbone
        self.causal = causal
        self.token_budget = token_budget
        self.prefix_reuse = prefix_reuse and causal and keys_and_values_only(self.config)
        if prefix_reuse and causal and not self.prefix_reuse:  # (a hybrid: .prefix.keys_and_values_only)
            logger.info("%s keeps a recurrent state in some layers: each sequence runs whole", type(backbone).__name__)
        supported = causal and supports_engine_attention(backbone)
        if engine_attention and not supported:
            raise ValueError(f"engine_attention=True is not available for {type(backbone).__name__} (checked on "
                             f"causal {', '.join(sorted(CHECKED_MODEL_TYPES))} backbones); leave it unset")
        if causal and not supported:
            log_generic_path(backbone)
        self.stats = EngineStats()
        self.worker = BackboneWorker(backbone, pad_token_id, causal, self.stats)
        if engine_attention is None:
            engine_attention = supported and self.device.type == "cpu"
        self.engine_attention = bool(engine_attention)
        self.fused_kernels: bool | None = None  # None: where they pay (.fused.pays); True/False: always/never
        self._fused: FusedForwards | None = None
        self.ragged = True  # with the engine attention: sequences and prefix groups end to end, no padding (.ragged)
        self.fit_threads = True  # on CPU each forward uses only the cores other processes leave free (.threads)
        self.round_shapes: bool | None = None  # None: where oneDNN builds kernels per row count (.shapes.rounds)
        self._oom_cap: int | None = None  # lowered after an out-of-memory error
        self._lock = threading.Lock()  # one forward at a time: the last layer is patched during a forward
        self._kept = KeptPrefixes()

    @property
    def pad_token_id(self) -> int:
        return self.worker.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def config(self):  # the language model's: a vision-language backbone's (Gemma-3, Qwen3.5) is its text_config
        config = getattr(self.backbone, "config", None)
        return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config

    # ---------------------------------------------------------------- what every backend offers
    @property
    def supports_prompt_cache(self) -> bool:
        """A causal backbone's prompts can be kept across calls (:attr:`prompt_cache_tokens`)."""
        return self.prefix_reuse

    def to(self, device) -> None:
        """Nothing to move: the family moves its model (the backbone included)."""

    def shutdown(self) -> None:
        """Nothing to end: the model is freed with the family."""

    def metrics(self) -> dict:
        """Token accounting and the prompt cache, for the server's ``/metrics``."""
        return {"engine": self.stats.as_dict(), "prompt_cache": self.prompt_cache_info()}

    # ---------------------------------------------------------------- budget and packing
    def budget(self) -> int:
        """Padded tokens per forward: ``token_budget`` if given, else from the memory free now; never above a
        budget that ran out of memory before."""
        budget = self.token_budget or sizes.auto_budget(self.device, self.config, self.dtype)
        return min(budget, self._oom_cap) if self._oom_cap else budget

    def _pack(self, items: list, width: Callable, extra: Callable | None = None) -> list[list]:
        """:func:`.packing.pack` with this engine's budget and per-forward overhead."""
        return pack(items, width, self.budget(), sizes.forward_overhead(self.device), extra)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:  # length-sorted, <= budget() padded tokens each
        return self._pack(list(range(len(lengths))), lambda i: lengths[i])

    # ---------------------------------------------------------------- public entry point
    @torch.inference_mode()
    def hidden_at(self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], *,
                  prefix_reuse: bool | None = None) -> list[torch.Tensor]:
        """Hidden states at ``positions[i]`` of ``sequences[i]``, in the caller's order. ``prefix_reuse=False``
        forces plain micro-batches (each sequence run whole) for this call."""
        with self._lock:
            return self._hidden_at(sequences, positions, prefix_reuse)

    def warm_up(self) -> float:
        """Compile now what the first calls would compile: the fused CPU kernels (:mod:`.fused`), for the configured
        thread count, one less and one (what a forward falls to beside busy processes, :mod:`.threads`), over the
        calls a server sees first: one sequence, the same again (its prompt from the prompt cache), a prompt shared
        by continuations long and short (a size of 1 is a graph of its own) beside a lone sequence, and one more
        continuation of the cached prompt alone. A server then answers its first requests in milliseconds instead
        of after up to half a minute of compiling, which a client's timeout would spend (AReaL gives a reward call
        15 s). Call it before scoring: nothing is counted, and the prompt cache is left empty. Returns the seconds
        it took (0 where nothing compiles: off CPU, or no fused kernels)."""
        if not self._fused_wanted():
            return 0.0
        logger.info("rmplugins: compiling the engine's fused CPU kernels for the first calls (about half a minute "
                    "on 2 cores with an empty inductor cache, seconds with it filled)")
        started = time.perf_counter()
        if self._fused_forwards() is None:  # made here: its probes compile too
            return 0.0
        vocab = int(getattr(self.config, "vocab_size", 0) or 32)
        ids = [(7 * i + 3) % vocab for i in range(120)]
        prompt = ids[:40]
        calls = [[prompt + ids[40:46]], [prompt + ids[40:46]],
                 [prompt + ids[46:76], prompt + ids[76:81], prompt + ids[81:82], ids[90:102]],
                 [prompt + ids[102:110]]]
        configured, fit, counted = torch.get_num_threads(), self.fit_threads, self.stats.as_dict()
        limit = self.prompt_cache_tokens
        self.fit_threads = False
        try:
            ladder = fit and not owned_elsewhere()  # the counts forwards fit to, unless vLLM owns the count here
            for threads in dict.fromkeys([*thread_counts(configured)[:2], 1] if ladder else [configured]):
                set_threads(threads)
                self.prompt_cache_tokens = 0  # each thread count from an empty cache, as a server starts
                self.prompt_cache_tokens = 4 * len(ids)
                for sequences in calls:
                    self.hidden_at(sequences, [[-1]] * len(sequences))
        finally:
            set_threads(configured)
            self.fit_threads = fit
            self.prompt_cache_tokens = 0
            self.prompt_cache_tokens = limit
            self.stats.restore(counted)
        return time.perf_counter() - started

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
        return sizes.auto_prompt_cache_tokens(self.device, self.config, self.dtype)

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
        self.worker.attend_in_engine = self.engine_attention and self._window_covers(uniq)
        self.worker.fused = self._fused_forwards()
        self.worker.round_shapes = (rounds(self.device, self.dtype) if self.round_shapes is None
                                    else bool(self.round_shapes))
        if self.device.type == "cpu":
            keep_freed_memory()  # once per process (.allocator)
        reuse = self.prefix_reuse if prefix_reuse is None else (prefix_reuse and self.causal)
        if reuse and not self._prefix_reuse_possible(uniq):
            reuse = False
        groups = plan_groups(uniq) if reuse else [PrefixGroup(0, [i]) for i in range(len(uniq))]
        if reuse and self._kept.limit and not self._kept.suspended:
            # Prompt cache: a sequence on its own runs as a "prefix" of its full length, so its keys/values are kept
            # for later calls, or is served from what an earlier call kept.
            groups = [g if g.prefix_len else PrefixGroup(len(uniq[g.members[0]]), g.members) for g in groups]
        call = CallState(uniq, wanted_sorted, [None] * len(uniq))
        plain = [g.members[0] for g in groups if g.prefix_len == 0]
        shared = [g for g in groups if g.prefix_len > 0]
        st.prefix_groups += len(shared)
        st.prefix_members += sum(len(g.members) for g in shared)
        if self.worker.attend_in_engine and self.ragged:  # end to end, no padding; what does not fit runs as below
            plain, shared = run_end_to_end(self, plain, shared, call)
        run_plain(self, plain, call)
        if shared:
            run_shared(self, shared, call)
        hidden = call.hidden

        out = []
        for u, pos in zip(owner, normalised):
            rows = [wanted_sorted[u].index(p) for p in pos]
            out.append(hidden[u][torch.as_tensor(rows, dtype=torch.long, device=hidden[u].device)])
        return out

    def _fused_wanted(self) -> bool:
        """``fused_kernels`` True, or None where they pay (:func:`.fused.pays`)."""
        explicit, hidden = self.fused_kernels, getattr(self.config, "hidden_size", None)
        return bool(explicit) if explicit is not None else fused_pays(self.device, self.dtype, hidden)

    def _fused_forwards(self) -> FusedForwards | None:
        """The fused kernels (:mod:`.fused`) where :meth:`_fused_wanted`, once they are available."""
        on = self._fused_wanted()
        if on and self._fused is None:
            self._fused = FusedForwards(self.backbone)
            if self._fused.available:
                logger.info("rmplugins: %d modules of %s run fused CPU kernels in %s (compiled on this first call: "
                            "20 s on 2 cores, 5 s cached by inductor); rm.engine.fused_kernels = False turns them off",
                            len(self._fused.replacements) + len(self._fused.attention), type(self.backbone).__name__,
                            str(self.dtype).removeprefix("torch."))
        return self._fused if on and self._fused.available else None

    def _prefix_reuse_possible(self, seqs: list[list[int]]) -> bool:
        """The backbone must keep keys and values in every layer (not a recurrent state: :func:`.prefix
        .keys_and_values_only`), take a cache and explicit positions; a sliding window (Mistral) must cover every
        sequence, since the cache built here is a plain full-attention one."""
        if not keys_and_values_only(self.config):
            return False
        params = inspect.signature(self.backbone.forward).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_kwargs and not {cache_keyword(self.backbone), "position_ids"} <= set(params):
            return False
        if not self._window_covers(seqs):
            logger.debug("prefix reuse off: a sequence is longer than the window (%s)", self.config.sliding_window)
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
            with threads_that_fit(self.fit_threads and self.device.type == "cpu",  # decided per layer
                                  getattr(self.backbone, "layers", ())):
                run(rows)
            return
        except torch.OutOfMemoryError as err:
            if len(rows) == 1:
                raise torch.OutOfMemoryError(
                    f"rmplugins: out of memory scoring a single sequence of {tokens(rows)} tokens (token_budget="
                    f"{self.budget()}); load the model with a smaller max_length=..., a device_map spreading it "
                    "over more GPUs, or free device memory") from err
        # outside the except block, so the failed attempt's tensors (held by the traceback) are released
        self.worker.release_memory()
        size = tokens(rows)
        self._oom_cap = max(sizes.MIN_TOKEN_BUDGET, min(self.budget(), size // 2))
        self.stats.oom_splits += 1
        logger.warning("rmplugins: out of memory on a micro-batch of %d sequences (%d padded tokens); split in two "
                       "and retried, token budget lowered to %d", len(rows), size, self._oom_cap)
        half = len(rows) // 2
        self._guarded(rows[:half], run, tokens)
        self._guarded(rows[half:], run, tokens)

    # ---------------------------------------------------------------- prefixes kept across calls
    def _kept_prompt(self, g: PrefixGroup, call: CallState):
        """``(n, keys/values, positions read inside, their hidden states)`` of the kept sequence agreeing longest with
        group ``g``'s shared tokens (its prompt shortened to where they agree; the rest runs with the
        continuations). None when none agrees on a block, a position read inside was not kept, or running the rest
        in every member costs more than running the prompt once. The path that uses it counts it
        (:meth:`_used_kept`)."""
        wanted = {q for m in g.members for q in call.wanted[m]}
        taken = self._kept.take(call.uniq[g.members[0]], min(g.prefix_len, min(len(call.uniq[m]) for m in g.members)
                                                            - 1), wanted)
        if taken is None or len(g.members) * (g.prefix_len - taken[0]) >= g.prefix_len:  # e.g. a template's opening
            return None
        return taken

    def _used_kept(self, taken) -> None:
        """A kept prompt (:meth:`_kept_prompt`) served a group instead of running again."""
        self.stats.prefix_cache_hits += 1
        self.stats.tokens_from_cache += taken[0]

    def _keep_limit(self) -> int:
        """Tokens the kept prefixes may hold now: the prompt cache's limit, at least ``KEEP_FACTOR x budget`` within a
        ``keep_prefixes`` block."""
        return max(self._kept.limit, sizes.KEEP_FACTOR * self.budget() if self._kept.depth else 0)
