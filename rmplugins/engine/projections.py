"""An attention block's key and value projections as one product, where that is measured faster.

Used by the engine's own attention blocks (:mod:`.fused`) during its forwards; the model's modules and weights are
left as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

JOIN_KEYS_VALUES = True  # False: two products, as the model runs them (benchmarks/bench_projections.py compares)
JOIN_BELOW = 2048  # rows: from here on the two products ran as fast or 2-5 % faster than the joint one
JOIN_MIN_WIDTH = 1024  # a narrower joint product had bands of its own (Qwen2.5-1.5B's, 512 wide: 0.6x)


class KeysValues:
    """An attention block's key and value projections as one product, in bf16 on CPU.

    oneDNN (3.12, AMX) splits some bf16 products unevenly over its threads: with 2 threads ``[rows, 1024] x [1024,
    1024]``, the keys and values of a Qwen3-0.6B-shaped model, runs on one thread for rows of about 1,000-1,440
    tokens (1.2-1.5 TFLOP/s against 2.0-2.9 below and above that band), where the joint ``[1024, 2048]`` product
    keeps both busy: 1.8-2x faster there, 1.0-1.1x at the other row counts below 2,048; Llama-3.2-1B's pair (hidden
    2048, 512 each) likewise (1.5-2x at 256-1,216 rows) (``benchmarks/bench_projections.py``). From 2,048 rows the
    two products ran as fast or a little faster, so they run there; and a joint product narrower than 1,024 outputs
    has bands of its own (Qwen2.5-1.5B's pair, hidden 1536 and 256 each, ran 0.6x at 768-1,152 rows), so narrower
    pairs stay two products. Costs a copy of the two weights (for Qwen3-0.6B 117 MB in bf16), made on the first call
    and again whenever either projection's tensors are replaced or changed in place (their version), so weights
    loaded into the model later are the ones used. A projection that is not a plain ``Linear``, or has hooks, runs
    its own forward."""

    def __init__(self, k_proj: torch.nn.Module, v_proj: torch.nn.Module):
        self.k_proj, self.v_proj = k_proj, v_proj
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._made_from: list | None = None

    @staticmethod
    def joins(dtype: torch.dtype, device: torch.device, width: int) -> bool:
        """Where the two projections, ``width`` outputs together, run as one (measured there, and only there)."""
        return JOIN_KEYS_VALUES and device.type == "cpu" and dtype == torch.bfloat16 and width >= JOIN_MIN_WIDTH

    def _plain(self, x: torch.Tensor) -> bool:
        k, v = self.k_proj, self.v_proj
        if not (type(k) is torch.nn.Linear and type(v) is torch.nn.Linear
                and self.joins(x.dtype, x.device, k.out_features + v.out_features)
                and k.weight.dtype == v.weight.dtype == x.dtype
                and k.weight.device == v.weight.device == x.device):
            return False
        hooks = torch.nn.modules.module
        return not (k._forward_hooks or k._forward_pre_hooks or v._forward_hooks or v._forward_pre_hooks
                    or hooks._global_forward_hooks or hooks._global_forward_pre_hooks
                    or (k.bias is None) != (v.bias is None))

    def _joint(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        parts = [t for m in (self.k_proj, self.v_proj) for t in (m.weight, m.bias) if t is not None]
        # the tensors it was made from are held (so a replacement cannot take their address) with their versions
        made_from = [(t.detach(), t._version, t.shape) for t in parts]
        if self._made_from is None or len(made_from) != len(self._made_from) or any(
                now.data_ptr() != then.data_ptr() or version != seen or shape != was
                for (now, version, shape), (then, seen, was) in zip(made_from, self._made_from)):
            with torch.no_grad():
                k, v = self.k_proj, self.v_proj
                self.weight = torch.cat([k.weight, v.weight]).detach()
                self.bias = None if k.bias is None else torch.cat([k.bias, v.bias]).detach()
            self._made_from = made_from
        return self.weight, self.bias

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._plain(x):
            self.weight = self.bias = self._made_from = None  # (a model moved to a GPU: its copy not kept)
            return self.k_proj(x), self.v_proj(x)
        if x.numel() >= JOIN_BELOW * x.shape[-1]:
            return self.k_proj(x), self.v_proj(x)
        joint = F.linear(x, *self._joint())
        split = self.k_proj.out_features
        return joint[..., :split], joint[..., split:]  # views: the keys' pass and the attention read them in place
