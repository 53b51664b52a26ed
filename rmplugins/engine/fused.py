"""Fused elementwise kernels for the engine's forwards on CPU.

Where a CPU multiplies bf16 matrices on AMX, the matmuls of a reward model are only part of a forward: the rest is
elementwise work that PyTorch's eager kernels run one pass at a time (each RMSNorm a round trip through float32 in
five passes over the activations, the gated MLP's activation and product in two, RoPE's rotations in six). During
the engine's own forwards the norms, the gated MLPs and the rotary embedding of the checked architectures run as one
fused pass each, compiled by ``torch.compile`` (inductor's C++ backend) with the same float32 arithmetic as the
model's code. In float32 the eager passes are fewer but each moves twice the bytes, and this CPU's memory, not its
arithmetic, sets their pace: for a model of real size they run fused too (:func:`pays`). The first call of each
compiles it: about 20 s on a 2-core CPU, 5 s once inductor has it cached on disk (and once more for each thread
count a forward runs with).

Checked, never guessed: a module is switched only if its class is one whose formula is written here, and its output
on a probe input agrees with its own forward; if compiling fails (no C++ compiler), everything runs as before
(logged once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import types

import torch
import torch.nn.functional as F

from .attention import engine_attention_forward, merge
from .cache_argument import given_cache
from .projections import KeysValues
from .swap import forwards_swapped

logger = logging.getLogger("rmplugins")


_epsilons: dict[float, torch.Tensor] = {}


def epsilon(value: float) -> torch.Tensor:
    """A norm's epsilon as the compiled kernels take it: a float32 scalar tensor, an input of the graph. A Python
    float would be a constant of it, so each model's epsilon would cost a graph of its own (with two dtypes and two
    thread counts, two epsilons reached dynamo's limit of 8 graphs per kernel)."""
    if value not in _epsilons:
        _epsilons[value] = torch.tensor(value, dtype=torch.float32)
    return _epsilons[value]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Llama, Mistral, Qwen2, Qwen3: ``weight * (x / rms(x) in float32).to(x.dtype)``."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rms_norm_plus_one(x: torch.Tensor, weight: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Gemma-2: ``(x / rms(x) * (1 + weight)).to(x.dtype)``, all in float32."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + weight.float())).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding of ``x`` ``[batch, length, heads, head_dim]`` (cos/sin ``[batch, length, head_dim]``), as
    transformers' ``apply_rotary_pos_emb`` computes it: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def normed_rope(x: torch.Tensor, weight: torch.Tensor, eps: float | torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor):
    """Qwen3's per-head RMSNorm of queries/keys, then the rotary embedding, in one pass."""
    return rope(rms_norm(x, weight, eps), cos, sin)


# The queries are written heads-first (``[batch, heads, length, head_dim]``, contiguous) by the same pass, at no
# extra cost: the CPU flash kernel reads a head's queries 15 % faster from one block than strided across the row.
def rope_heads_first(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return rope(x, cos, sin).transpose(1, 2).contiguous()


def normed_rope_heads_first(x: torch.Tensor, weight: torch.Tensor, eps: float | torch.Tensor, cos: torch.Tensor,
                            sin: torch.Tensor) -> torch.Tensor:
    return normed_rope(x, weight, eps, cos, sin).transpose(1, 2).contiguous()


def merged(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """:func:`.attention.merge` of two partial attentions, cast back to their dtype, in one pass."""
    return merge(out_a, lse_a, out_b, lse_b).to(out_a.dtype)


def silu_times(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def gelu_tanh_times(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


# class name -> (formula, the attribute holding epsilon); activation class name -> gated product
NORMS = {"LlamaRMSNorm": (rms_norm, "variance_epsilon"), "MistralRMSNorm": (rms_norm, "variance_epsilon"),
         "Qwen2RMSNorm": (rms_norm, "variance_epsilon"), "Qwen3RMSNorm": (rms_norm, "variance_epsilon"),
         "Gemma2RMSNorm": (rms_norm_plus_one, "eps")}
GATED_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Gemma2MLP"}
ATTENTIONS = {"LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention", "Gemma2Attention"}
ACTIVATIONS = {"SiLUActivation": silu_times, "SiLU": silu_times, "GELUTanh": gelu_tanh_times,
               "PytorchGELUTanh": gelu_tanh_times}

FLOAT32_MIN_HIDDEN = 512  # float32 runs fused from this hidden size: every real reward model, no tiny test model


def pays(device: torch.device, dtype: torch.dtype, hidden_size: int | None) -> bool:
    """Where the engine runs the fused kernels unless told (``engine.fused_kernels``): on CPU, in half precision
    (the elementwise passes are most of what AMX leaves), and in float32 for a model of real size (they are 5-10 %
    of a call there, against a one-off compile, about 20 s on 2 cores, a tiny model would never earn back)."""
    if device.type != "cpu":
        return False
    if dtype in (torch.bfloat16, torch.float16):
        return True
    return dtype == torch.float32 and (hidden_size or 0) >= FLOAT32_MIN_HIDDEN


_compiled: dict = {}
_compile_lock = threading.Lock()
_broken: list[str] = []  # why compiling failed, once


def compiled(fn, dtype: torch.dtype | None = None):
    """``torch.compile(fn)`` with dynamic shapes, made once per process and dtype; None when compiling is not
    possible. Each dtype compiles a copy of ``fn`` with a code object of its own: dynamo keeps a kernel's graphs,
    and its limit on them (``GRAPHS_PER_KERNEL`` here), per code object, and every thread count a forward runs with
    is a graph too."""
    if _broken:
        return None
    with _compile_lock:
        if (fn, dtype) not in _compiled:
            own = fn if dtype is None else types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                                                              fn.__defaults__, fn.__closure__)
            _compiled[fn, dtype] = EagerOnFailure(fn, torch.compile(own, dynamic=True, fullgraph=True))
        return _compiled[fn, dtype]


GRAPHS_PER_KERNEL = 64  # dynamo's default is 8: thread counts (.threads.thread_counts) x shapes reach it


@contextlib.contextmanager
def _compile_settings():
    """Set and restored around each call of a compiled kernel (3 us each; ``config.patch`` costs 70):

    - no "duck sizing" (two sizes, strides or offsets equal on the first call taken as always equal): a slice's
      storage offset that happened to equal another input's would otherwise cost a graph of its own;
    - up to ``GRAPHS_PER_KERNEL`` graphs per kernel instead of dynamo's 8: every thread count a forward runs with
      is a graph of its own, and a kernel past the limit would run eagerly for good (on 4 or more cores under a
      changing load, measured). Only these calls see the higher limit, not the rest of the process."""
    fx_config = getattr(getattr(torch.fx, "experimental", None), "_config", None)
    dynamo_config = getattr(getattr(torch, "_dynamo", None), "config", None)
    duck = getattr(fx_config, "use_duck_shape", None)
    limit = getattr(dynamo_config, "recompile_limit", None)
    if duck is not None:
        fx_config.use_duck_shape = False
    if limit is not None:
        dynamo_config.recompile_limit = max(limit, GRAPHS_PER_KERNEL)
    try:
        yield
    finally:
        if duck is not None:
            fx_config.use_duck_shape = duck
        if limit is not None:
            dynamo_config.recompile_limit = limit


class EagerOnFailure:
    """A compiled kernel that runs its own eager formula from the first call its compiled form cannot serve (a
    later compile failing, dynamo's limit of recompiles reached: each dtype, thread count and input rank is a graph
    of its own), logged once: a forward never fails because a kernel could not be compiled. An error that is not
    the compiler's is raised again by the eager formula itself."""

    def __init__(self, fn, fast):
        self.fn, self.fast = fn, fast

    def __call__(self, *args):
        if self.fast is not None:
            try:
                with _compile_settings():
                    return self.fast(*args)
            except torch.OutOfMemoryError:  # the forward's to handle (split and retry), not the compiler's
                raise
            except Exception as err:  # noqa: BLE001 (whatever the compiler raised: the formula runs eagerly)
                self.fast = None
                logger.warning("rmplugins: the fused CPU kernel %s runs eagerly from now on (same results, slower): "
                               "%s: %s", self.fn.__name__, type(err).__name__,
                               str(err).splitlines()[0] if str(err) else "")
        return self.fn(*args)


class FusedForwards:
    """The fused forwards of one backbone's norms, gated MLPs and (for the engine's own attention) the attention
    blocks' query/key preparation, found and probed once (:meth:`patch` applies them for one forward).
    ``available`` is False when none could be used (logged once)."""

    @torch.inference_mode()  # as the forwards run: a probe with gradients on compiles a training graph besides
    def __init__(self, backbone: torch.nn.Module):
        self.replacements: list[tuple[torch.nn.Module, object]] = []
        self.attention: list[tuple[torch.nn.Module, object]] = []  # only with the engine attention
        dtype = next((p.dtype for p in backbone.parameters() if p.is_floating_point()), None)
        self.merge = compiled(merged, dtype)  # the engine attention's log-sum-exp merge
        probed: dict[tuple, bool] = {}
        for module in backbone.modules():
            name = type(module).__name__
            if "forward" in module.__dict__:  # hooked (accelerate's device placement): left as it is
                continue
            if name in NORMS:
                formula, eps_attr = NORMS[name]
                eps = getattr(module, eps_attr, None)
                if eps is None or getattr(module, "weight", None) is None:
                    continue
                key = (name, module.weight.dim())
                if key not in probed:
                    probed[key] = self._agrees(module, formula, (module.weight.numel(),), eps)
                if probed[key]:
                    self.replacements.append((module, self._norm_forward(module, formula, epsilon(float(eps)))))
            elif name in GATED_MLPS:
                act = ACTIVATIONS.get(type(getattr(module, "act_fn", None)).__name__)
                if act is None or not all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
                    continue
                key = (name, act)
                if key not in probed:
                    probed[key] = self._gated_agrees(module, act)
                if probed[key]:
                    self.replacements.append((module, self._mlp_forward(module, act)))
            elif name in ATTENTIONS:
                prepare = self._query_key_preparation(module, probed)
                if prepare is not None:
                    self.attention.append((module, self._attention_forward(module, *prepare)))

    @property
    def available(self) -> bool:
        return bool(self.replacements or self.attention)

    @staticmethod
    def _close(fused: torch.Tensor, own: torch.Tensor) -> bool:
        """Within the dtype's rounding: the same formula computed in another order, not another formula."""
        tol = 1e-5 if own.dtype == torch.float32 else 0.02
        return bool(((fused.float() - own.float()).abs().max() <= tol * (own.float().abs().max() + 0.05)).item())

    # Probes are shaped as the engine's forwards are ([1, tokens, ...]: one row end to end), so the graph compiled
    # here is the one the forwards use (torch.compile specialises a dimension of size 1).
    def _agrees(self, module, formula, shape, eps) -> bool:
        fn = compiled(formula, module.weight.dtype)
        if fn is None:
            return False
        x = torch.randn(1, 5, *shape, dtype=module.weight.dtype, device=module.weight.device)
        try:
            return self._close(fn(x, module.weight, epsilon(float(eps))), module(x))
        except Exception as err:  # noqa: BLE001 (any compiler failure: run as before)
            self._give_up(err)
            return False

    def _gated_agrees(self, module, act) -> bool:
        fn = compiled(act, module.gate_proj.weight.dtype)
        if fn is None:
            return False
        w = module.gate_proj.weight
        g, u = (torch.randn(1, 5, w.shape[0], dtype=w.dtype, device=w.device) for _ in range(2))
        try:
            return self._close(fn(g, u), module.act_fn(g) * u)
        except Exception as err:  # noqa: BLE001
            self._give_up(err)
            return False

    def _query_key_preparation(self, module, probed):
        """(queries' function, keys' function) for an attention block: the rotary embedding, after Qwen3's per-head
        norms where it has them (the queries written heads-first); probed against the model's own norms and
        ``apply_rotary_pos_emb``."""
        import sys

        reference = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
        if reference is None or not all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "head_dim", "scaling", "layer_idx")):
            return None
        norms = [getattr(module, "q_norm", None), getattr(module, "k_norm", None)]
        if any(n is not None for n in norms) and not all(
                type(n).__name__ in NORMS and NORMS[type(n).__name__][0] is rms_norm and "forward" not in n.__dict__
                for n in norms):
            return None
        key = (type(module).__name__, norms[0] is not None)
        fns = []
        for norm, (plain, normed) in zip(norms, [(rope_heads_first, normed_rope_heads_first), (rope, normed_rope)]):
            if norm is None:
                fns.append(compiled(plain, module.q_proj.weight.dtype))
            else:
                fn = compiled(normed, module.q_proj.weight.dtype)
                fns.append(None if fn is None else (lambda x, c, s, f=fn, n=norm, e=epsilon(float(
                    norm.variance_epsilon)): f(x, n.weight, e, c, s)))
        if any(f is None for f in fns):
            return None
        if key not in probed:
            probed[key] = self._rope_agrees(module, reference, norms, fns)
        return fns if probed[key] else None

    def _rope_agrees(self, module, reference, norms, fns) -> bool:
        w = module.q_proj.weight
        x = torch.randn(1, 7, 3, module.head_dim, dtype=w.dtype, device=w.device)
        # the keys laid out as the forwards hand them over: a slice of the joint keys-and-values product where
        # there is one (a layout is a graph of its own for the compiler: the probe's is the one kept)
        x_k = torch.randn(1, 7, 2, 3, module.head_dim, dtype=w.dtype, device=w.device)[:, :, 0] if KeysValues.joins(
            w.dtype, w.device, sum(getattr(m, "out_features", 0) for m in (module.k_proj, module.v_proj))) else x
        cos, sin = (torch.randn(1, 7, module.head_dim, dtype=w.dtype, device=w.device) for _ in range(2))
        try:
            own = [x if norms[0] is None else norms[0](x), x_k if norms[1] is None else norms[1](x_k)]
            want = reference(own[0].transpose(1, 2), own[1].transpose(1, 2), cos, sin)
            got = [fns[0](x, cos, sin), fns[1](x_k, cos, sin).transpose(1, 2)]  # queries come heads-first
            return all(self._close(g, r) for g, r in zip(got, want))
        except Exception as err:  # noqa: BLE001
            self._give_up(err)
            return False

    @staticmethod
    def _attention_forward(module, prepare_q, prepare_k):
        softcap = getattr(module, "attn_logit_softcapping", None)

        keys_values = KeysValues(module.k_proj, module.v_proj)

        def forward(hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
            shape = hidden_states.shape[:-1]
            heads = (*shape, -1, module.head_dim)
            cos, sin = position_embeddings
            query = prepare_q(module.q_proj(hidden_states).view(heads), cos, sin)  # heads-first already
            key, value = keys_values(hidden_states)
            key = prepare_k(key.view(heads), cos, sin).transpose(1, 2)
            value = value.view(heads).transpose(1, 2)
            cache = given_cache(past_key_values, kwargs)
            if cache is not None:  # kept by the cache: the values alone, not the joint product they slice
                key, value = cache.update(key, value.contiguous(), module.layer_idx)
            kwargs.pop("sliding_window", None)
            out, weights = engine_attention_forward(module, query, key, value, attention_mask, scaling=module.scaling,
                                                    softcap=softcap, **kwargs)
            return module.o_proj(out.reshape(*shape, -1).contiguous()), weights
        forward.keys_values = keys_values
        return forward

    @staticmethod
    def _give_up(err: Exception) -> None:
        if not _broken:
            _broken.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            logger.warning("rmplugins: fused CPU kernels are unavailable (torch.compile failed: %s); the engine's "
                           "half-precision forwards run PyTorch's eager kernels (slower, same results)", _broken[0])

    @staticmethod
    def _norm_forward(module, formula, eps):
        fn = compiled(formula, module.weight.dtype)

        def forward(hidden_states):
            return fn(hidden_states, module.weight, eps)
        return forward

    @staticmethod
    def _mlp_forward(module, act):
        fn = compiled(act, module.gate_proj.weight.dtype)

        def forward(x):
            if x.dim() == 2:  # the last layer's read rows (.read_positions): the forwards' graph, not one more
                return forward(x.unsqueeze(0)).squeeze(0)
            return module.down_proj(fn(module.gate_proj(x), module.up_proj(x)))
        return forward

    def patch(self, attention: bool = False):
        """Within the block the switched modules run their fused forwards; ``attention``: the attention blocks too
        (only for the engine's own attention, which they call)."""
        return forwards_swapped(self.replacements + (self.attention if attention else []))
