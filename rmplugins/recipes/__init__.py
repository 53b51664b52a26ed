"""Iterative DPO and rejection sampling: generate n candidates per prompt with the current policy, score them
with a reward/preference model, build DPO pairs or pick the best of n, train with TRL, repeat.

    from rmplugins.recipes import RecipeConfig, run_recipe
    run_recipe(RecipeConfig(recipe="iterative-dpo", policy=..., reward_model=..., prompts=..., output=...))

The command line (``rmplugins iterative-dpo`` / ``rmplugins rejection-sampling``) is a thin layer over
:func:`run_recipe`; see ``rmplugins/recipes/loop.py`` for the on-disk layout and the resume rules.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "RecipeConfig": ".config",
    "Generator": ".generation",
    "HFGenerator": ".generation",
    "VLLMGenerator": ".generation",
    "make_generator": ".generation",
    "run_recipe": ".loop",
    "PromptFileError": ".prompts",
    "read_prompts": ".prompts",
    "SelectionStats": ".selection",
    "best_of_n": ".selection",
    "select_pair": ".selection",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
