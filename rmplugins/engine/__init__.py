"""rmplugins' scoring engine: a backbone run over many token sequences at the unique-token floor, giving the final
hidden states the families' heads read. The transformers backend of every family (:class:`ScoringEngine`)."""

from .budget import activation_bytes_per_token, kv_bytes_per_token
from .engine import ScoringEngine
from .state import EngineStats

__all__ = ["EngineStats", "ScoringEngine", "activation_bytes_per_token", "kv_bytes_per_token"]
