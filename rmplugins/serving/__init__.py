"""The reward server (``rmplugins serve``): OpenRLHF's remote reward protocol with dynamic batching.

One job a module: :mod:`.protocol` (request bodies -> samples), :mod:`.scorer` (samples -> rewards, the only module
that knows the reward kinds), :mod:`.batcher` (concurrent requests -> one batched call), :mod:`.passthrough` (the
same interface in front of vLLM's scheduler), :mod:`.app` (routes, auth, access log, metrics), :mod:`.transport`
(uvicorn with read deadlines and a connection cap), :mod:`.cli`.
"""

from ..lazy import lazy_exports
from .cli import SERVER_PACKAGES

_EXPORTS = {
    "create_app": ".app",
    "RewardService": ".app",
    "Batcher": ".batcher",
    "RequestError": ".protocol",
    "RequestParser": ".protocol",
    "Sample": ".protocol",
    "reference_from_label": ".protocol",
    "RewardScorer": ".scorer",
    "BackgroundServer": ".transport",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, extra=("server", SERVER_PACKAGES))
