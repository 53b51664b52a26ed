"""rmplugins: the strongest open reward, preference and process reward models (Bradley-Terry classifiers on every
backbone, ArmoRM, RLHFlow pair-PM, PairRM, GPM, Qwen2.5-Math-PRM) as rewards for RLHF loops.

- ``load_reward_model(path_or_hub_id)``: a model of any family, loaded from its real checkpoint with its authors'
  numbers; ``rm.score``, ``rm.compare``, ``rm.rank`` / ``rank_many``.
- ``RewardFunction(model)``: a model as an item of TRL's ``reward_funcs=`` (GRPO, RLOO, online DPO);
  ``AsyncRemoteRewardFunction(url)``: the same through ``rmplugins serve``; ``RemoteObjectives(url, names)``:
  ArmoRM's objectives as separate reward functions (GDPO's ``normalize_then_sum``).
- ``rmplugins serve`` / ``iterative-dpo`` / ``rejection-sampling`` / ``demo``: the command line (``--help``).

Names are imported on first use, so ``import rmplugins`` is instant and imports neither torch nor TRL.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_reward_model": ".loading",
    "ENGINES": ".loading",
    "KINDS": ".registry",
    "FAMILIES": ".registry",
    "FamilySpec": ".registry",
    "detect_kind": ".checkpoints",
    "RewardModel": ".base",
    "PointwiseRewardModel": ".base",
    "PairwiseRewardModel": ".base",
    "RowScores": ".base",
    "Conversation": ".inputs",
    "Ranking": ".ranking",
    "RewardFunction": ".trl.reward_function",
    "AsyncRemoteRewardFunction": ".trl.remote",
    "RemoteObjectives": ".trl.remote",
    "JudgeSpec": ".judges.spec",
    "PRESETS": ".judges.presets",
}
__all__ = sorted(_EXPORTS) + ["__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
