"""rmplugins: open reward and preference models (Bradley-Terry, ArmoRM, RLHFlow pair-PM, PairRM, GPM) for RLHF
loops. ``load_reward_model`` is the entry point; ``RewardFunction`` plugs a model into TRL's ``reward_funcs``."""

from .base import PairwiseRewardModel, PointwiseRewardModel, RewardModel
from .inputs import Conversation
from .loading import KINDS, detect_kind, load_reward_model
from .ranking import Ranking
from .trl import AsyncRemoteRewardFunction, RewardFunction  # noqa: F401  (TRL reward_funcs; imports no TRL)

__version__ = "0.1.0"

__all__ = ["KINDS", "Conversation", "PairwiseRewardModel", "PointwiseRewardModel", "Ranking", "RewardModel",
           "detect_kind", "load_reward_model", "__version__"]
