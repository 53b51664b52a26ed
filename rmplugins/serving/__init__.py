"""The reward server (``rmplugins serve``): OpenRLHF's remote reward protocol with dynamic batching.

One job a module: :mod:`.protocol` (request bodies -> samples), :mod:`.scorer` (samples -> rewards, the only module
that knows the reward kinds), :mod:`.batcher` (concurrent requests -> one batched call), :mod:`.app` (routes,
auth, access log, metrics), :mod:`.transport` (uvicorn with read deadlines and a connection cap), :mod:`.cli`.
"""

from .app import create_app
from .batcher import Batcher
from .protocol import RequestError, RequestParser, Sample, reference_from_label
from .scorer import RewardScorer
from .transport import BackgroundServer

__all__ = ["BackgroundServer", "Batcher", "RequestError", "RequestParser", "RewardScorer", "Sample", "create_app",
           "reference_from_label"]
