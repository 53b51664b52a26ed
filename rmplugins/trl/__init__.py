"""TRL integration: reward models as ``reward_funcs`` and the callbacks TRL lacks.

``RewardFunction``, ``AsyncRemoteRewardFunction`` and ``RemoteObjectives`` import without TRL or transformers'
Trainer; the callbacks (``WinRateCallback``, ``CoLocationCallback``, ``RewardBreakdownCallback``) load TRL's pieces
on first access.

TRL 1.16 warns, on every import of its vLLM-aware modules, that it was tested with vLLM 0.22-0.31; rmplugins
installs vLLM 0.32 (its CPU build) on purpose and the paths it uses are tested with it, so that one message is not
the user's to act on and is filtered here (nothing else is).
"""

import warnings

from ..lazy import lazy_exports

warnings.filterwarnings("ignore", message=r"TRL currently supports vLLM versions from", category=UserWarning)

_EXPORTS = {
    "RewardFunction": ".reward_function",
    "AsyncRemoteRewardFunction": ".remote",
    "RemoteObjectives": ".remote",
    "WinRateCallback": ".callbacks",
    "CoLocationCallback": ".callbacks",
    "RewardBreakdownCallback": ".callbacks",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
