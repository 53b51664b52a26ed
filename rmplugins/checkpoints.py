"""What a checkpoint is, read from its files without loading weights: where it is (a local directory or a hub
id), its config and tensor shapes, and which family it is (its identity file, a known hub id, or what the config and
tensors show, through the family table in :mod:`rmplugins.registry`).

Detection never runs remote code: it reads ``config.json`` (``architectures`` and the extra fields the authors'
code wrote) and the tensor names and shapes in the safetensors headers. What the files cannot say (a
pair-preference model is a plain causal LM; Better-PairRM has PairRM's layout) comes from an identity file, a known
hub id or an explicit option, never from a name.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import FAMILIES, KINDS, family, known_identity, variants

logger = logging.getLogger("rmplugins")

IDENTITY_FILE = "rmplugins.json"
# What a checkpoint's files cannot say is carried by a known hub id (the registry's ``known_ids``), by the
# checkpoint's IDENTITY_FILE ({"kind": ..., "variant": ...}), or by the caller's kind=/variant=.


# ----------------------------------------------------------------------------- files
def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id fetched (or found in the cache) with huggingface_hub."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():  # "" read as "."
        raise ValueError(f"the reward model must be a checkpoint directory or a hub id such as 'org/name', got "
                         f"{name_or_path!r}")
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
        if type(err).__name__ == "HFValidationError":  # cannot be a hub id either ('org/name')
            raise ValueError(f"cannot find checkpoint {str(name_or_path)!r}: no such directory (and not a hub id such "
                             "as 'org/name')") from None
        raise ValueError(f"cannot find checkpoint {str(name_or_path)!r}: not a local directory, and the hub download "
                         f"failed ({type(err).__name__}: {err}). Pass a local path, or set HF_HOME to a cache "
                         "that has it.") from err


def read_config(path: Path) -> dict[str, Any]:
    """config.json, refused with the reason where the installed transformers does not know its model type (a
    backbone newer than it: every later step would fail, or misname the checkpoint)."""
    config = _read_json(path / "config.json", "the checkpoint's configuration")
    model_type = config.get("model_type")
    if isinstance(model_type, str) and "auto_map" not in config:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        if model_type not in CONFIG_MAPPING_NAMES:
            raise ValueError(f"{path}: model type {model_type!r} (architectures={config.get('architectures')}) is not "
                             f"known to the installed transformers {transformers.__version__}: it came in a later "
                             "release; upgrade transformers (pip install -U transformers)")
    return config


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
        if unknown or identity.get("kind") not in (None, *KINDS) or identity.get("variant") not in (None, *variants()):
            raise ValueError(f"{file}: expected {{\"kind\": one of {list(KINDS)}, \"variant\": one of "
                             f"{list(variants())} (PairRM only)}}, got {identity}")
        return dict(identity), str(file)
    known = known_identity(name_or_path)
    return (known, f"the known hub id {name_or_path}") if known else ({}, None)


def tensor_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors headers (no weights are read)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        if list(path.glob("*.bin")):
            raise ValueError(f"{path} has only PyTorch .bin weights; convert them to safetensors "
                             "(transformers' save_pretrained does) so the family can be detected safely")
        raise ValueError(f"{path} has no *.safetensors weights: the download or copy left them out; fetch the "
                         "checkpoint's *.safetensors files (with model.safetensors.index.json if it is sharded)")
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
    """Which family a checkpoint is, from its config and tensor names (the registry's ``detect`` rules, in order);
    a clear error when none fits."""
    for spec in FAMILIES.values():
        if spec.detect is not None and spec.detect(config, shapes):
            return spec.kind
    archs = config.get("architectures") or []
    if causal_lm(config):
        raise ValueError(
            f"this checkpoint is a plain causal language model (architectures={archs}): that is what a policy "
            "looks like, and also the layout of the RLHFlow pair-preference model (a judge answering 'A'/'B') and "
            "of a generative judge. If it is a pair-preference model, pass kind='pair_pm' (CLI: --reward-kind "
            f"pair_pm / --kind pair_pm), or write {{\"kind\": \"pair_pm\"}} to {IDENTITY_FILE} in the checkpoint "
            "directory; if it is a generative judge, pass kind='genrm' and judge=PRESET or a JSON file (CLI: "
            "--kind genrm / --reward-kind genrm with --judge; docs/judges.md); if it is your policy, point the "
            "reward model option at a reward model instead")
    raise ValueError(
        f"cannot tell which reward-model family this checkpoint is (architectures={archs}, "
        f"{len(shapes)} tensors, e.g. {sorted(shapes)[:3]}); supported: {', '.join(KINDS)}. Pass kind=... if you "
        "know it is one of them")


def causal_lm_class(config: dict[str, Any]) -> str | None:
    """The class the checkpoint loads as a causal LM: its own ``*ForCausalLM``, or for a ``*ForConditionalGeneration``
    (Qwen3.5 and Gemma-3 ship as vision-language models) the one transformers maps its ``model_type`` to (Qwen3.5's
    text model, Gemma-3's whole model); None where there is none (an encoder-decoder, Mistral-3)."""
    archs = config.get("architectures") or []
    named = next((a for a in archs if a.endswith("ForCausalLM")), None)
    if named or not any(a.endswith("ForConditionalGeneration") for a in archs):
        return named
    # imported only here: it imports all of transformers' modelling code, seconds that a refused command never needs
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type"))


def causal_lm(config: dict[str, Any]) -> bool:
    return causal_lm_class(config) is not None


def check_kind_fits(kind: str, config: dict[str, Any], shapes: dict[str, list[int]], path: Path) -> None:
    """Refuse a kind the checkpoint cannot be (kind=... or an identity file naming the wrong family)."""
    missing = family(kind).missing(config, shapes)
    if missing:
        try:
            found = f"it looks like kind {detect_kind(config, shapes)!r}"
        except ValueError:
            found = f"architectures={config.get('architectures') or []}"
        raise ValueError(f"{path} cannot be loaded as kind {kind!r}: it lacks {', '.join(missing)} ({found}); "
                         "leave kind unset to detect it, or pass the right one")


@dataclass
class Checkpoint:
    """What a checkpoint is, read from its files without loading weights."""

    path: Path
    config: dict[str, Any]
    shapes: dict[str, list[int]]
    kind: str
    source: str           # where the kind (and variant) came from, for the log
    variant: str | None   # PairRM only; None means not known (loading then asks for it)

    @property
    def text(self) -> dict[str, Any]:
        """The language model's own config: ``text_config`` of a vision-language checkpoint (a Qwen3.5
        classifier keeps its hidden size and positions there), else the config itself."""
        inner = self.config.get("text_config")
        return inner if isinstance(inner, dict) else self.config


def identify(name_or_path: str | os.PathLike, *, kind: str | None = None, variant: str | None = None) -> Checkpoint:
    """Find the checkpoint and tell its family (explicit options, then its identity file or known hub id, then
    its config and tensors), refusing what it cannot be: every check ``load_reward_model`` makes before it reads
    any weights, so a command can validate its reward model before starting work."""
    if kind is not None:
        family(kind)  # an unknown kind is refused with the known ones
    if variant is not None and variant not in variants():
        raise ValueError(f"unknown PairRM variant {variant!r}; choose one of {variants()}")
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
    if variant is not None and variant not in family(detected).variants:
        raise ValueError(f"variant={variant!r} is a PairRM option, and {name_or_path} is kind {detected!r}")
    if variant is not None:
        source = f"{source}; variant from the variant option"
    return Checkpoint(path, config, shapes, detected, source,
                      variant if variant is not None else identity.get("variant"))


def check_policy(name_or_path: str | os.PathLike, option: str = "--policy") -> Path:
    """The checkpoint directory of a policy to generate with and train: a causal language model with its LM head.
    A reward model (any family this library knows, by its files, its identity file or its hub id) or a model without
    an LM head is refused with what it is: loaded as a policy it would generate noise from a freshly initialised
    head, be trained on that, and the run would end with exit 0."""
    try:
        path = resolve_checkpoint(name_or_path)
    except ValueError as err:
        raise ValueError(f"{option}: {err}") from None
    config = read_config(path)
    shapes = tensor_shapes(path)
    identity, source = read_identity(path, name_or_path)
    archs = config.get("architectures") or []
    kind = identity.get("kind")
    if kind is None:
        try:
            kind = detect_kind(config, shapes)
            source = "its config.json and tensor names"
        except ValueError:
            kind = None
    if kind is not None:
        raise ValueError(f"{option} {name_or_path} is a reward model (kind {kind!r}, from {source}), not a policy: "
                         f"give the language model to train as {option}, and this one as --reward-model")
    loaded_as = causal_lm_class(config)
    if loaded_as is None:
        raise ValueError(f"{option} {name_or_path} is not a causal language model transformers loads as one "
                         f"(architectures={archs}, model_type {config.get('model_type')!r}); give the policy's "
                         "checkpoint (an *ForCausalLM model)")
    if loaded_as not in archs:
        logger.warning("%s %s is %s: the recipes generate with and train %s, its language model, and save each "
                       "iteration's model as that alone (without the vision tower)", option, name_or_path, archs[0],
                       loaded_as)
    if "lm_head.weight" not in shapes and not _ties_embeddings(path, config):
        raise ValueError(f"{option} {name_or_path} has no LM head (no lm_head.weight, and its embeddings are not "
                         "tied): generating with it would use a freshly initialised head; give the full causal LM")
    return path


def _ties_embeddings(path: Path, config: dict[str, Any]) -> bool:
    """Whether the LM head is the input embedding (``tie_word_embeddings``, the model type's default when
    config.json does not say)."""
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(path).tie_word_embeddings)
