"""Ready reward functions for ``trl grpo --reward_funcs integrations.trl.rewards.<name>`` (and ``trl rloo``).

Each name loads its model on first access, so importing this module is cheap. Override a model with the
environment variable ``RMPLUGINS_<NAME>_MODEL`` (e.g. a local path, or a tiny checkpoint in tests).
``trl grpo`` does not pass ``num_generations`` to reward functions: the group-aware ones group runs of
identical prompts, which is TRL's layout.
"""

from __future__ import annotations

import os
from typing import Any

SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "armorm": ("RLHFlow/ArmoRM-Llama3-8B-v0.1", {}),
    # ArmoRM steered towards helpfulness and safety instead of its gating network
    "armorm_helpful_safe": ("RLHFlow/ArmoRM-Llama3-8B-v0.1", {"objective_weights": {
        "helpsteer-helpfulness": 1.0, "ultrafeedback-helpfulness": 1.0, "beavertails-is_safe": 1.0}}),
    "fsfairx": ("sfairXC/FsfairX-LLaMA3-RM-v0.1", {}),
    "rm_mistral": ("weqweasdas/RM-Mistral-7B", {}),
    "pair_pm": ("RLHFlow/pair-preference-model-LLaMA3-8B", {}),
    "pairrm": ("llm-blender/PairRM-hf", {}),
    "better_pairrm": ("mightbe/Better-PairRM", {}),
    "gpm_gpo": ("general-preference/GPM-Llama-3.1-8B", {}),
    # generative judges (docs/judges.md): P("yes") of Qwen3-Reranker asked whether the response answers well, and
    # RM-R1's reasoning judge over each pair of a prompt's group (generated verdicts: slow, every pair decoded)
    "qwen3_reranker": ("Qwen/Qwen3-Reranker-4B", {"kind": "genrm", "judge": "qwen3-reranker"}),
    "rm_r1": ("gaotang/RM-R1-DeepSeek-Distilled-Qwen-7B", {"kind": "genrm", "judge": "rm-r1-reasoning"}),
}

_INSTANCES: dict[str, Any] = {}

__all__ = list(SPECS)


def model_for(name: str) -> str:
    return os.environ.get(f"RMPLUGINS_{name.upper()}_MODEL") or SPECS[name][0]


def get(name: str):
    """The shared ``rmplugins.RewardFunction`` for ``name``, created on first use."""
    if name not in SPECS:
        raise AttributeError(f"no ready reward {name!r}; choose one of {sorted(SPECS)}")
    if name not in _INSTANCES:
        from rmplugins import RewardFunction

        _INSTANCES[name] = RewardFunction(model_for(name), name=name, **SPECS[name][1])
    return _INSTANCES[name]


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return get(name)
