"""TRL integration: reward models as ``reward_funcs`` and the callbacks TRL lacks.

``RewardFunction`` and ``AsyncRemoteRewardFunction`` import without TRL or transformers' Trainer; the callbacks
(``WinRateCallback``, ``CoLocationCallback``, ``RewardBreakdownCallback``) load on first access.
"""

from .remote import AsyncRemoteRewardFunction
from .reward_function import RewardFunction

_CALLBACKS = ("WinRateCallback", "CoLocationCallback", "RewardBreakdownCallback")

__all__ = [
    "AsyncRemoteRewardFunction",
    "CoLocationCallback",
    "RewardBreakdownCallback",
    "RewardFunction",
    "WinRateCallback",
]


def __getattr__(name):
    if name in _CALLBACKS:
        from . import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
