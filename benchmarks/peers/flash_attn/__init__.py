"""A CPU stand-in for the two ``flash_attn`` modules OpenRLHF 0.11.2 imports at module level.

``openrlhf/models/ring_attn_utils.py`` imports ``flash_attn.bert_padding`` and ``flash_attn.utils.distributed``
unconditionally, so ``openrlhf.cli.serve_rm`` cannot even start where flash-attn has no build (CPU). Its padded
path (the default; no ``--ds.packing_samples``) calls none of these functions: they exist so the import succeeds,
and each one called says that packing needs the real flash-attn rather than computing something else. Used only by
the benchmark and the peer test, which put this directory first on the OpenRLHF server's ``PYTHONPATH``.
"""

__version__ = "0.0.0+rmplugins-cpu-standin"


def _packing_needs_flash_attn(name: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"flash_attn.{name} was called, but this is rmplugins' CPU stand-in for flash-attn, which only lets "
            "OpenRLHF's modules import: sample packing (--ds.packing_samples) needs the real flash-attn on a GPU")

    refuse.__name__ = name.rsplit(".", 1)[-1]
    return refuse
