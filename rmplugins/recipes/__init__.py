"""Iterative DPO and rejection sampling: generate n candidates per prompt with the current policy, score them
with a reward/preference model, build DPO pairs or pick the best of n, train with TRL, repeat.

    from rmplugins.recipes import RecipeConfig, run_recipe
    run_recipe(RecipeConfig(recipe="iterative-dpo", policy=..., reward_model=..., prompts=..., output=...))

The command line (``rmplugins iterative-dpo`` / ``rmplugins rejection-sampling``) is a thin layer over
:func:`run_recipe`; see ``rmplugins/recipes/loop.py`` for the on-disk layout and the resume rules.
"""

from .config import RecipeConfig
from .generation import Generator, HFGenerator, VLLMGenerator, make_generator
from .loop import run_recipe
from .prompts import PromptFileError, read_prompts
from .selection import SelectionStats, best_of_n, select_pair

__all__ = [
    "Generator",
    "HFGenerator",
    "PromptFileError",
    "RecipeConfig",
    "SelectionStats",
    "VLLMGenerator",
    "best_of_n",
    "make_generator",
    "read_prompts",
    "run_recipe",
    "select_pair",
]
