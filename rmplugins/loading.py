"""``load_reward_model``: find the checkpoint, detect its family from what is on disk, load it natively.

Detection never runs remote code: it reads ``config.json`` (``architectures`` and the extra fields the authors'
code wrote) and the tensor names and shapes in the safetensors headers.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("rmplugins")

KINDS = ("bt", "armorm", "pair_pm", "pairrm", "gpm")
FAMILY_CLASSES = {
    "bt": "rmplugins.families.bt:BradleyTerryRewardModel",
    "armorm": "rmplugins.families.armorm:ArmoRMRewardModel",
    "pair_pm": "rmplugins.families.pair_pm:PairPMRewardModel",
    "pairrm": "rmplugins.families.pairrm:PairRMRewardModel",
    "gpm": "rmplugins.families.gpm:GPMRewardModel",
}


# ----------------------------------------------------------------------------- files
def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id fetched (or found in the cache) with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is a directory without config.json: not a transformers checkpoint")
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; pass the checkpoint directory (with config.json and *.safetensors)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]))
    except Exception as err:
        raise ValueError(f"cannot find checkpoint {name_or_path!r}: not a local directory, and the hub download "
                         f"failed ({type(err).__name__}: {err}). Pass a local path, or set HF_HOME to a cache "
                         "that has it.") from err


def read_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


def tensor_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors headers (no weights are read)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if list(path.glob("*.bin")):
            raise ValueError(f"{path} has only PyTorch .bin weights; convert them to safetensors "
                             "(transformers' save_pretrained does) so the family can be detected safely")
        raise ValueError(f"{path} has no *.safetensors weights")
    shapes: dict[str, list[int]] = {}
    for file in files:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


# ----------------------------------------------------------------------------- detection
def detect_kind(config: dict[str, Any], shapes: dict[str, list[int]]) -> str:
    """Which family a checkpoint is, from its config and tensor names; a clear error when none fits."""
    archs = config.get("architectures") or []
    if "LlamaForRewardModelWithGating" in archs or ("num_objectives" in config and "regression_layer.weight" in shapes):
        return "armorm"
    if "DebertaV2PairRM" in archs or ("source_prefix_id" in config and "cand1_prefix_id" in config):
        return "pairrm"
    if "value_head.weight" in shapes:
        return "gpm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        labels = config.get("num_labels") or len(config.get("id2label") or {0: 0})
        if labels != 1:
            raise ValueError(f"a sequence classifier with {labels} labels is not a Bradley-Terry reward model "
                             "(num_labels must be 1)")
        return "bt"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "pair_pm"  # a generative judge answering "A"/"B" (RLHFlow pair-preference model)
    raise ValueError(
        f"cannot tell which reward-model family this checkpoint is (architectures={archs}, "
        f"{len(shapes)} tensors, e.g. {sorted(shapes)[:3]}); supported: {', '.join(KINDS)}. Pass kind=... if you "
        "know it is one of them")


# ----------------------------------------------------------------------------- device and precision
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype.replace("torch.", ""), None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'")
        return value
    return dtype


def default_attention(device: str) -> str:
    if str(device).startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def model_kwargs(device: str, dtype: torch.dtype, attn_implementation: str | None, device_map: Any) -> dict:
    """Keyword arguments for ``from_pretrained``: dtype, attention kernel, and placement."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    kwargs["device_map"] = device_map if device_map is not None else device
    return kwargs


def family_class(kind: str):
    module, name = FAMILY_CLASSES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_reward_model(name_or_path: str | os.PathLike, *, kind: str | None = None, device: str | None = None,
                      dtype: Any = None, **options):
    """Load any supported reward or preference model from a local directory or a hub id.

    ``kind`` (``"bt" | "armorm" | "pair_pm" | "pairrm" | "gpm"``) is detected when omitted. ``device`` defaults to
    CUDA when available, ``dtype`` to bfloat16 on GPU and float32 on CPU. Options: ``max_length``,
    ``token_budget`` (tokens per micro-batch), ``attn_implementation``, ``device_map`` (e.g. "auto" for models
    larger than one GPU), ``chat_template``, ``deterministic`` (each row scored alone, so its numbers never
    depend on what it is batched with; see ``RewardModel.deterministic``); per family ``tau`` (GPM),
    ``temperature`` (pair-PM), ``variant`` (PairRM: "pairrm" or "better").
    """
    deterministic = bool(options.pop("deterministic", False))
    path = resolve_checkpoint(name_or_path)
    config = read_config(path)
    shapes = tensor_shapes(path)
    detected = detect_kind(config, shapes) if kind is None else kind
    if detected not in KINDS:
        raise ValueError(f"unknown kind {detected!r}; choose one of {KINDS}")
    device = str(device or default_device())
    dtype = resolve_dtype(dtype, device)
    if detected != "pairrm":
        options.setdefault("attn_implementation", default_attention(device))
    if detected == "gpm":
        options["tensor_shapes"] = shapes
    cls = family_class(detected)
    logger.info("loading %s as kind %r on %s (%s)", name_or_path, detected, device, str(dtype).replace("torch.", ""))
    try:
        rm = cls.from_pretrained(path, config=config, name_or_path=str(name_or_path), device=device, dtype=dtype,
                                 **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise TypeError(f"load_reward_model: option not supported for kind {detected!r}: {err}") from err
        raise
    rm.deterministic = deterministic
    return rm
