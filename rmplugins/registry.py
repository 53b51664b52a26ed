"""The reward-model families: one table, one entry per family, everything the rest of the library asks about a
family before its code is imported (vLLM's model registry is the model: kind -> "module:Class", resolved lazily).

Adding a family is one module in :mod:`rmplugins.families` and one :class:`FamilySpec` below. Detection
(:func:`rmplugins.checkpoints.detect_kind`), the kind checks, the loader, the CLIs' ``--kind`` choices, the vLLM
backend, the recipes' pair rules and the test checkpoints all read this table; ``tests/test_registry.py`` checks
that every registered kind is accepted by each of them.

A family is never guessed from a name: ``detect`` reads ``config.json`` and the tensor names; what the files cannot
say (a pair-preference model or a judge is a plain causal LM; Better-PairRM has PairRM's layout) comes from
``known_ids``, the checkpoint's ``rmplugins.json``, or an explicit option.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Config = dict[str, Any]
Shapes = dict[str, list[int]]


def _architectures(config: Config) -> list[str]:
    return list(config.get("architectures") or [])


def _ends_with(config: Config, suffix: str | tuple[str, ...]) -> bool:
    return any(a.endswith(suffix) for a in _architectures(config))


@dataclass(frozen=True)
class FamilySpec:
    """One family. ``model`` is ``"module:Class"`` of its :class:`~rmplugins.base.RewardModel` subclass, imported
    when a model of this kind loads (:meth:`model_class`).

    - ``detect(config, shapes)``: True when the files show this family (it may raise with the reason a checkpoint
      of its layout cannot be used); None: never detected from the files, only by a known hub id, an identity file
      or ``kind=``.
    - ``required_tensors``, ``architecture_suffix``: what a checkpoint needs to be loaded as this kind (a wrong
      ``kind=`` is refused with what is missing, before any weights are read).
    - ``known_ids``: hub ids (lower case) whose identity is known, with the identity (``variant`` for PairRM).
    - ``variants``: input-format variants a checkpoint of this layout can be (PairRM / Better-PairRM).
    - ``vllm``: the family can run on vLLM (``engine="vllm"``); otherwise ``vllm_refusal`` says why not.
    - ``tiny``: the test checkpoints of this family (built by :mod:`rmplugins.testing`), the first the default.
    - ``mode``: how it ranks a prompt's candidates, which decides the recipes' pair rules: ``"pointwise"`` (a reward
      each), ``"pairwise"`` (judged in pairs), ``"gpo"`` (GPM's GPO scores) or ``"judge"`` (pointwise or pairwise
      by the judge spec it is loaded with).
    """

    kind: str
    title: str
    model: str
    examples: tuple[str, ...]
    detect: Callable[[Config, Shapes], bool] | None = None
    required_tensors: tuple[str, ...] = ()
    architecture_suffix: str | tuple[str, ...] | None = None  # one of them
    known_ids: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    variants: tuple[str, ...] = ()
    vllm: bool = True
    vllm_refusal: str = ""
    tiny: tuple[str, ...] = ()
    mode: str = "pointwise"

    def model_class(self):
        """The family's class (its module imported now)."""
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)

    def missing(self, config: Config, shapes: Shapes) -> list[str]:
        """What a checkpoint lacks to be loaded as this kind (empty when it fits)."""
        out = [t for t in self.required_tensors if t not in shapes]
        if self.architecture_suffix and not _ends_with(config, self.architecture_suffix):
            suffixes = self.architecture_suffix
            names = " or ".join(f"*{s}" for s in ((suffixes,) if isinstance(suffixes, str) else suffixes))
            out.append(f"a {names} architecture in config.json")
        return out


def _bradley_terry(config: Config, shapes: Shapes) -> bool:
    if not _ends_with(config, "ForSequenceClassification"):
        return False
    labels = config.get("num_labels") or len(config.get("id2label") or {0: 0})
    if labels != 1:
        raise ValueError(f"a sequence classifier with {labels} labels is not a Bradley-Terry reward model "
                         "(num_labels must be 1)")
    return True


# Detection order: the first family whose ``detect`` is true wins.
FAMILIES: dict[str, FamilySpec] = {spec.kind: spec for spec in (
    FamilySpec(
        kind="armorm", title="ArmoRM (19 objectives + gating)",
        model="rmplugins.families.armorm:ArmoRMRewardModel", examples=("RLHFlow/ArmoRM-Llama3-8B-v0.1",),
        detect=lambda c, s: "LlamaForRewardModelWithGating" in _architectures(c)
        or ("num_objectives" in c and "regression_layer.weight" in s),
        required_tensors=("regression_layer.weight", "reward_transform_matrix", "gating.logit_scale"),
        tiny=("armorm", "armorm_real_vocab")),
    FamilySpec(
        kind="pairrm", title="PairRM / Better-PairRM",
        model="rmplugins.families.pairrm:PairRMRewardModel",
        examples=("llm-blender/PairRM-hf", "mightbe/Better-PairRM"),
        detect=lambda c, s: "DebertaV2PairRM" in _architectures(c)
        or ("source_prefix_id" in c and "cand1_prefix_id" in c),
        required_tensors=("head_layer.1.weight", "head_layer.4.weight"),
        known_ids={"llm-blender/pairrm": {"variant": "pairrm"}, "llm-blender/pairrm-hf": {"variant": "pairrm"},
                   "mightbe/better-pairrm": {"variant": "better"},
                   "maywell/better-pairrm": {"variant": "better"}},  # the id the card's own table links
        variants=("pairrm", "better"),
        vllm=False, vllm_refusal="PairRM is a DeBERTa-v2 model, which vLLM does not implement",
        tiny=("pairrm", "better_pairrm"), mode="pairwise"),
    FamilySpec(
        kind="gpm", title="General Preference representation Model",
        model="rmplugins.families.gpm:GPMRewardModel", examples=("general-preference/GPM-Llama-3.1-8B",),
        detect=lambda c, s: "value_head.weight" in s, required_tensors=("value_head.weight",),
        tiny=("gpm", "gpm_real_vocab"), mode="gpo"),
    FamilySpec(
        kind="prm", title="process reward models (a reward per reasoning step)",
        model="rmplugins.families.prm:ProcessRewardModel", examples=("Qwen/Qwen2.5-Math-PRM-7B",),
        detect=lambda c, s: _ends_with(c, "ForProcessRewardModel"),
        required_tensors=("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"), tiny=("prm",)),
    FamilySpec(
        kind="bt", title="Bradley-Terry sequence classifiers",
        model="rmplugins.families.bt:BradleyTerryRewardModel",
        examples=("weqweasdas/RM-Mistral-7B", "sfairXC/FsfairX-LLaMA3-RM-v0.1", "Skywork/Skywork-Reward-V2-Qwen3-0.6B"),
        detect=_bradley_terry, architecture_suffix="ForSequenceClassification",
        tiny=("bt", "bt_llama3", "bt_real_vocab", "bt_llama3_real_vocab", "bt_qwen3", "bt_qwen25", "bt_gemma2",
              "bt_inform", "bt_llama32")),
    FamilySpec(
        kind="pair_pm", title="RLHFlow pairwise preference model",
        model="rmplugins.families.pair_pm:PairPMRewardModel", examples=("RLHFlow/pair-preference-model-LLaMA3-8B",),
        architecture_suffix="ForCausalLM", known_ids={"rlhflow/pair-preference-model-llama3-8b": {}},
        tiny=("pair_pm", "pair_pm_real_vocab"), mode="pairwise"),
    FamilySpec(
        kind="genrm", title="generative judges (any causal LM, with a JudgeSpec)",
        model="rmplugins.families.genrm:GenerativeJudge",
        examples=("Qwen/Qwen3-Reranker-4B", "gaotang/RM-R1-DeepSeek-Distilled-Qwen-7B",
                  "nvidia/Qwen3-Nemotron-32B-GenRM-Principle"),
        architecture_suffix=("ForCausalLM", "ForConditionalGeneration"),  # Qwen3.5 and Gemma-3 ship as the latter
        tiny=("genrm_qwen3", "policy", "genrm_gemma2", "genrm_mistral"),
        mode="judge"),
)}

KINDS: tuple[str, ...] = ("bt", "armorm", "pair_pm", "pairrm", "gpm", "prm", "genrm")  # the order users read them in
assert set(KINDS) == set(FAMILIES), "every registered family is listed in KINDS"


def family(kind: str) -> FamilySpec:
    """The registered family of ``kind``; a clear error naming the kinds when there is none."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}") from None


def known_identity(name_or_path: Any) -> dict[str, str] | None:
    """``{"kind": ..., ...}`` of a hub id whose family is known (case-insensitive), else None."""
    key = str(name_or_path).strip("/").lower()
    for spec in FAMILIES.values():
        if key in spec.known_ids:
            return {"kind": spec.kind, **spec.known_ids[key]}
    return None


def variants() -> tuple[str, ...]:
    """Every input-format variant any family knows (the CLIs' ``--variant`` choices)."""
    return tuple(v for spec in FAMILIES.values() for v in spec.variants)
