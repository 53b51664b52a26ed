"""What ``GET /metrics`` reports: counters the app, the request parser and the batcher update."""

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Metrics:
    started: float = field(default_factory=time.time)
    requests: int = 0
    samples: int = 0
    errors: dict = field(default_factory=dict)
    batches: int = 0
    batched_samples: int = 0
    max_batch: int = 0
    disconnects: int = 0        # clients gone before sending their whole body (not server errors)
    fallbacks: int = 0          # scored as plain text although a policy template was given
    template_refused: int = 0   # chat-templated text no template could recover: refused (422)
    template_builtin: dict = field(default_factory=dict)  # recovered with a built-in template, by name
    latencies: deque = field(default_factory=lambda: deque(maxlen=20000))
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=2000))
    model_seconds: float = 0.0

    def error(self, status: int) -> None:
        self.errors[str(status)] = self.errors.get(str(status), 0) + 1

    def batch(self, size: int, seconds: float) -> None:
        """One batch of ``size`` items ran in ``seconds``."""
        self.model_seconds += seconds
        self.batches += 1
        self.batched_samples += size
        self.max_batch = max(self.max_batch, size)
        self.batch_sizes.append(size)

    def snapshot(self, queue_samples: int) -> dict:
        lat = sorted(self.latencies)

        def pct(q):
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None

        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": self.requests, "samples": self.samples, "errors": dict(self.errors),
            "batches": self.batches,
            "mean_batch_size": round(self.batched_samples / self.batches, 3) if self.batches else None,
            "max_batch_size": self.max_batch,
            "recent_batch_sizes": list(self.batch_sizes)[-20:],
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "window": len(lat)},
            "model_seconds": round(self.model_seconds, 3),
            "queue_samples": queue_samples,
            "client_disconnects": self.disconnects,
            "template_fallbacks": self.fallbacks,
            "template_refused": self.template_refused,
            "template_builtin": dict(self.template_builtin),
        }
