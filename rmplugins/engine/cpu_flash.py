"""PyTorch's CPU flash-attention kernel as the engine calls it: checked once per dtype, never assumed.

The engine calls the kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) directly, for its log-sum-exp, with
grouped key/value heads (16 query heads over 8 for Qwen3-0.6B, 32 over 8 for Llama-3-8B). The kernel learnt to read
grouped heads in place after PyTorch 2.8 ("[CPU] Support GQA for flash attention", pytorch#157893, July 2025); the
releases before it, which ``torch>=2.4`` admits, were written for as many key heads as query heads, and what one does
with fewer (an error, or query head ``h`` reading key head ``h`` past the key heads, whatever lies there in memory: a
wrong reward without an error) cannot be run here. So before its first use in a dtype the kernel runs on a small probe
of the engine's layouts against a plain float32 softmax: where it reads grouped heads right it is used as it is; where
it does only with each key and value head repeated for its query heads, they are repeated (a copy per call: slower;
logged once); where it fails or disagrees either way, the engine's portable math attends instead (logged once).
"""

from __future__ import annotations

import logging
import threading

import torch
from transformers.integrations.sdpa_attention import repeat_kv

logger = logging.getLogger("rmplugins")

GROUPED, REPEATED, MATH = "grouped", "repeated", "math"
_verdicts: dict[torch.dtype, str] = {}
_lock = threading.Lock()


def flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool,
          mask: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` from PyTorch's CPU flash kernel, for ``[batch, heads, length, head_dim]`` tensors."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, causal,
                                                                          attn_mask=mask, scale=scale)
    return out, lse


def _reference(query, key, value, causal, mask, scale):
    """Softmax attention in float32, the plainest way (grouped heads repeated, masks added)."""
    rep = query.shape[1] // key.shape[1]
    q, k, v = query.float(), repeat_kv(key, rep).float(), repeat_kv(value, rep).float()
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores + mask.float()
    if causal:
        n_q, n_k = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(n_q, n_k, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


def _probes(dtype: torch.dtype):
    """Calls of the shapes the engine makes: grouped heads as views into a row of tokens (``[1, tokens, heads,
    head_dim]`` transposed), a causal call, and one over more keys than it may see (an additive mask hides them)."""
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = 4, 2, 32
    row = torch.randn(1, 48, heads + 2 * kv_heads, dim, generator=g).to(dtype)
    q, k, v = (row[:, :, a:b].transpose(1, 2) for a, b in ((0, heads), (heads, heads + kv_heads),
                                                          (heads + kv_heads, heads + 2 * kv_heads)))
    hidden = torch.zeros(1, 1, 1, 48, dtype=dtype)  # as the engine's key_count mask
    hidden[..., 37:] = float("-inf")
    return [(q[:, :, :37], k[:, :, :37], v[:, :, :37], True, None), (q[:, :, :11], k, v, False, hidden)]


def _agrees(kernel, dtype: torch.dtype, repeat: bool) -> bool:
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for q, k, v, causal, mask in _probes(dtype):
        if repeat:
            k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
        out, lse = kernel(q, k, v, causal, mask, 0.17)
        ref_out, ref_lse = _reference(q, k, v, causal, mask, 0.17)
        if not (out.shape == ref_out.shape and (out.float() - ref_out).abs().max() <= tol
                and (lse.float().reshape(ref_lse.shape) - ref_lse).abs().max() <= tol):
            return False
    return True


def check(dtype: torch.dtype, kernel=flash) -> str:
    """How ``kernel`` (PyTorch's by default) may serve grouped heads in ``dtype``: :data:`GROUPED` (as they are),
    :data:`REPEATED` (only repeated for their query heads), :data:`MATH` (not at all)."""
    with torch.no_grad():
        for how, repeat in ((GROUPED, False), (REPEATED, True)):
            try:
                if _agrees(kernel, dtype, repeat):
                    return how
            except (RuntimeError, TypeError, ValueError, NotImplementedError):
                continue
    return MATH


def verdict(dtype: torch.dtype) -> str:
    """:func:`check` of PyTorch's kernel, once per dtype in a process (logged where it is not :data:`GROUPED`)."""
    if dtype not in _verdicts:
        with _lock:
            if dtype not in _verdicts:
                how = check(dtype)
                if how != GROUPED:
                    logger.warning(
                        "rmplugins: PyTorch %s's CPU flash-attention kernel %s in %s; the engine %s. PyTorch's kernel "
                        "reads grouped key/value heads in place from 2.9 on (faster)", torch.__version__,
                        "reads grouped key/value heads wrongly" if how == REPEATED else "fails or disagrees with "
                        "softmax attention", dtype, "repeats each key/value head for its query heads" if how ==
                        REPEATED else "attends with its portable math instead (slower)")
                _verdicts[dtype] = how
    return _verdicts[dtype]
