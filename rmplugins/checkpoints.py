"""What a checkpoint is, read from its files without loading weights: where it is (a local directory or a hub
id), its config and tensor shapes, which family it is (its identity file, a known hub id, or what the config and
tensors show), and the defaults for placing it (device, dtype, attention kernel). The families and
:mod:`rmplugins.loading` both build on this module.

Detection never runs remote code: it reads ``config.json`` (``architectures`` and the extra fields the authors'
code wrote) and the tensor names and shapes in the safetensors headers. What the files cannot say (a
pair-preference model is a plain causal LM; Better-PairRM has PairRM's layout) comes from an identity file, a known
hub id or an explicit option, never from a name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

KINDS = ("bt", "armorm", "pair_pm", "pairrm", "gpm", "prm")
IDENTITY_FILE = "rmplugins.json"
# What a checkpoint's files cannot say: a pair-preference model is a plain causal LM (like any policy), and
# Better-PairRM has PairRM's exact layout but another input format. Known hub ids carry it here; a local copy
# carries it in IDENTITY_FILE ({"kind": ..., "variant": ...}) or the caller passes kind=/variant=.
KNOWN_IDS = {
    "rlhflow/pair-preference-model-llama3-8b": {"kind": "pair_pm"},
    "llm-blender/pairrm": {"kind": "pairrm", "variant": "pairrm"},
    "llm-blender/pairrm-hf": {"kind": "pairrm", "variant": "pairrm"},
    "mightbe/better-pairrm": {"kind": "pairrm", "variant": "better"},
    "maywell/better-pairrm": {"kind": "pairrm", "variant": "better"},  # the id the card's own table links
}
PAIRRM_VARIANTS = ("pairrm", "better")


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
    return _read_json(path / "config.json", "the checkpoint's configuration")


def _read_json(file: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: cannot read {what} ({type(err).__name__}: {err}); the file is damaged or "
                         "incomplete: download or copy the checkpoint again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_identity(path: Path, name_or_path: Any) -> tuple[dict[str, str], str | None]:
    """(kind/variant the checkpoint is known to be, where that came from): the checkpoint's IDENTITY_FILE, else
    the known hub id it was loaded by; ({}, None) when neither says."""
    file = path / IDENTITY_FILE
    if file.exists():
        identity = _read_json(file, "the reward-model identity")
        unknown = set(identity) - {"kind", "variant"}
        if unknown or identity.get("kind") not in (None, *KINDS) or \
                identity.get("variant") not in (None, *PAIRRM_VARIANTS):
            raise ValueError(f"{file}: expected {{\"kind\": one of {list(KINDS)}, \"variant\": one of "
                             f"{list(PAIRRM_VARIANTS)} (PairRM only)}}, got {identity}")
        return dict(identity), str(file)
    known = KNOWN_IDS.get(str(name_or_path).strip("/").lower())
    return (dict(known), f"the known hub id {name_or_path}") if known else ({}, None)


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
        shapes.update(_safetensors_shapes(file))
    return shapes


def _safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """One file's tensor shapes, after checking that its header parses and that the file is as long as the
    header says (a truncated download otherwise fails deep inside the loader)."""
    damaged = (f"{file} is not a complete safetensors file ({{}}); the download or copy was interrupted or the "
               "file is damaged: fetch it again")
    total = file.stat().st_size
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(damaged.format(f"{total} bytes, shorter than a header"))
            (size,) = struct.unpack("<Q", head)
            if size > total - 8:
                raise ValueError(damaged.format(f"its header claims {size} bytes, the file has {total}"))
            header = json.loads(f.read(size))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        shapes = {k: list(v["shape"]) for k, v in tensors.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(damaged.format(f"unreadable header: {type(err).__name__}")) from None
    if 8 + size + end > total:
        raise ValueError(damaged.format(f"{total} bytes, {8 + size + end} expected from its header"))
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
    if any(a.endswith("ForProcessRewardModel") for a in archs):
        return "prm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        labels = config.get("num_labels") or len(config.get("id2label") or {0: 0})
        if labels != 1:
            raise ValueError(f"a sequence classifier with {labels} labels is not a Bradley-Terry reward model "
                             "(num_labels must be 1)")
        return "bt"
    if any(a.endswith("ForCausalLM") for a in archs):
        raise ValueError(
            f"this checkpoint is a plain causal language model (architectures={archs}): that is what a policy "
            "looks like, and also the layout of the RLHFlow pair-preference model (a judge answering 'A'/'B'). "
            "If it is a pair-preference model, pass kind='pair_pm' (CLI: --reward-kind pair_pm / --kind pair_pm), "
            f"or write {{\"kind\": \"pair_pm\"}} to {IDENTITY_FILE} in the checkpoint directory; if it is your "
            "policy, point the reward model option at a reward model instead")
    raise ValueError(
        f"cannot tell which reward-model family this checkpoint is (architectures={archs}, "
        f"{len(shapes)} tensors, e.g. {sorted(shapes)[:3]}); supported: {', '.join(KINDS)}. Pass kind=... if you "
        "know it is one of them")


def score_head(shapes: dict[str, list[int]], hidden: int, labels: int = 1) -> str:
    """The score head the tensors describe: ``"linear"`` (transformers' ``score.weight [labels, hidden]``) or
    ``"mlp"`` (``Linear(hidden, hidden) -> ReLU -> Linear(hidden, labels)``: ``score.0.*``, ``score.2.*``, both
    with biases; INF-ORM with one label, Qwen2.5-Math-PRM with two). Anything else is refused with what was found:
    loading it as a plain classifier would leave a randomly initialised head and silently wrong rewards."""
    found = {k: v for k, v in shapes.items() if k == "score.weight" or k.startswith("score.")}
    if set(found) == {"score.weight"} and found["score.weight"] == [labels, hidden]:
        return "linear"
    mlp = {"score.0.weight": [hidden, hidden], "score.0.bias": [hidden], "score.2.weight": [labels, hidden],
           "score.2.bias": [labels]}
    if found == mlp:
        return "mlp"
    what = "Bradley-Terry" if labels == 1 else "process-reward"
    raise ValueError(f"unrecognised {what} score head: {found or 'no score.* tensors'} (hidden size {hidden}); "
                     f"supported: score.weight [{labels}, hidden] (a linear head) or score.0/score.2 weights and "
                     "biases (Linear -> ReLU -> Linear, as INF-ORM)")


def mlp_score_head(path, hidden: int, device, dtype, labels: int = 1) -> torch.nn.Sequential:
    """INF-ORM's head (and Qwen2.5-Math-PRM's, ``labels=2``), ``Linear(hidden, hidden) -> ReLU -> Linear(hidden,
    labels)``, with its ``score.0.*`` and ``score.2.*`` tensors read from the checkpoint's safetensors
    (transformers' classifier has a linear ``score`` and would leave these unread)."""
    head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, labels))
    head.load_state_dict(read_tensors(path, "score."), strict=True)
    return head.to(device=device, dtype=dtype).eval()


def read_tensors(path, prefix: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors named ``prefix...``, keyed by the rest of their names (small heads only: each is
    read whole)."""
    from safetensors import safe_open

    state = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            state.update({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    return state


@contextmanager
def quiet_transformers():
    """transformers' warnings silenced for a load whose head this library reads itself (its load report would call
    the head's tensors unexpected and a fresh ``score.weight`` missing)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


# Tensors each kind reads beyond its backbone: a wrong kind= fails here with the reason, not deep in a loader.
REQUIRED_TENSORS = {
    "armorm": ("regression_layer.weight", "reward_transform_matrix", "gating.logit_scale"),
    "gpm": ("value_head.weight",),
    "pairrm": ("head_layer.1.weight", "head_layer.4.weight"),
    "prm": ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"),
}


def check_kind_fits(kind: str, config: dict[str, Any], shapes: dict[str, list[int]], path: Path) -> None:
    """Refuse a kind the checkpoint cannot be (kind=... or an identity file naming the wrong family)."""
    missing = [t for t in REQUIRED_TENSORS.get(kind, ()) if t not in shapes]
    archs = config.get("architectures") or []
    if kind == "bt" and not any(a.endswith("ForSequenceClassification") for a in archs):
        missing.append("a *ForSequenceClassification architecture in config.json")
    if kind == "pair_pm" and not any(a.endswith("ForCausalLM") for a in archs):
        missing.append("a *ForCausalLM architecture in config.json")
    if missing:
        try:
            found = f"it looks like kind {detect_kind(config, shapes)!r}"
        except ValueError:
            found = f"architectures={archs}"
        raise ValueError(f"{path} cannot be loaded as kind {kind!r}: it lacks {', '.join(missing)} ({found}); "
                         "leave kind unset to detect it, or pass the right one")


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


def default_attention(device: str, config: dict[str, Any] | None = None) -> str:
    """flash-attention 2 on CUDA when installed, else SDPA; eager on CPU for a model whose attention logits are
    soft-capped (Gemma-2), which transformers' SDPA path ignores."""
    if str(device).startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "eager" if soft_capped(config) else "sdpa"


def soft_capped(config: dict[str, Any] | None) -> bool:
    return bool((config or {}).get("attn_logit_softcapping"))


def check_attention(attn_implementation: str | None, config: dict[str, Any], name: Any) -> None:
    """Refuse an attention kernel that would compute a different model: transformers' SDPA path drops Gemma-2's
    attention soft-capping (tanh(logits / c) * c) without a word, which moves rewards by a few percent."""
    if attn_implementation == "sdpa" and soft_capped(config):
        raise ValueError(f"{name}: attn_implementation='sdpa' ignores this model's attention soft-capping "
                         f"(attn_logit_softcapping={config['attn_logit_softcapping']}), so its rewards would be "
                         "wrong; use 'eager' (the default here) or 'flash_attention_2' on a GPU")


def model_kwargs(device: str, dtype: torch.dtype, attn_implementation: str | None, device_map: Any) -> dict:
    """Keyword arguments for a family's ``from_pretrained``: dtype, attention kernel, and placement."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    kwargs["device_map"] = device_map if device_map is not None else device
    return kwargs

def pad_or_eos(tokenizer: Any) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its EOS (Llama-3 checkpoints often have no
    pad token; the engine never attends to padding, so any id will do)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass
class Checkpoint:
    """What a checkpoint is, read from its files without loading weights."""

    path: Path
    config: dict[str, Any]
    shapes: dict[str, list[int]]
    kind: str
    source: str           # where the kind (and variant) came from, for the log
    variant: str | None   # PairRM only; None means not known (loading then asks for it)


def identify(name_or_path: str | os.PathLike, *, kind: str | None = None, variant: str | None = None) -> Checkpoint:
    """Find the checkpoint and tell its family (explicit options, then its identity file or known hub id, then
    its config and tensors), refusing what it cannot be: every check ``load_reward_model`` makes before it reads
    any weights, so a command can validate its reward model before starting work."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    if variant is not None and variant not in PAIRRM_VARIANTS:
        raise ValueError(f"unknown PairRM variant {variant!r}; choose one of {PAIRRM_VARIANTS}")
    path = resolve_checkpoint(name_or_path)
    config = read_config(path)
    shapes = tensor_shapes(path)
    identity, source = read_identity(path, name_or_path)
    if kind is not None:
        detected, source = kind, "the kind option"
    elif identity.get("kind"):
        detected = identity["kind"]
    else:
        detected, source = detect_kind(config, shapes), "config.json and the tensor names"
    check_kind_fits(detected, config, shapes, path)
    if variant is not None and detected != "pairrm":
        raise ValueError(f"variant={variant!r} is a PairRM option, and {name_or_path} is kind {detected!r}")
    if detected == "pairrm" and variant is not None:
        source = f"{source}; variant from the variant option"
    return Checkpoint(path, config, shapes, detected, source,
                      variant if variant is not None else identity.get("variant"))
