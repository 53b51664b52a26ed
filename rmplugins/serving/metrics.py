"""What the server counts, and ``GET /metrics`` in Prometheus' text format (``prometheus_client``, as vLLM, TGI
and SGLang expose theirs); the same numbers as JSON at ``GET /metrics.json``.

Counters and gauges are read at scrape time from :class:`Metrics`, the engine's token accounting (tokens processed
vs the unique-token floor, prompt-cache hits) and the group buffer; latencies, batch sizes and group waits are
histograms observed as they happen. Each app has its own registry, so two servers in one process never collide.
"""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Metrics:
    started: float = field(default_factory=time.time)
    requests: int = 0
    samples: int = 0
    errors: dict = field(default_factory=dict)
    batches: int = 0
    batched_samples: int = 0
    max_batch: int = 0
    disconnects: int = 0        # clients gone before their answer (not server errors)
    rejected: int = 0           # samples the model rejected: null in a partial answer, or the fallback reward
    fallback_rewards: int = 0   # of those, answered with --fallback-reward
    refusals: dict = field(default_factory=dict)  # every sample the model refused (rejected or 422/408), by kind
    fallbacks: int = 0          # scored as plain text although a policy template was given
    template_refused: int = 0   # chat-templated text no template could recover: refused (4xx)
    template_builtin: dict = field(default_factory=dict)  # recovered with a built-in template, by name
    latencies: deque = field(default_factory=lambda: deque(maxlen=20000))
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=2000))
    model_seconds: float = 0.0
    groups_completed: int = 0   # --group-size: groups that got all their samples
    groups_partial: int = 0     # timed out with 2 or more samples: ranked as they were (group_complete 0)
    groups_expired: int = 0     # timed out with 1 sample: answered 408
    group_retries: int = 0      # retried samples attached to their first arrival (not counted twice)
    group_spills: int = 0       # a prompt's next group opened right after one completed (more than N samples)
    registry: Any = field(default_factory=CollectorRegistry, repr=False)

    def __post_init__(self):
        self.latency_histogram = Histogram(
            "rmplugins_request_duration_seconds", "Seconds from a request's arrival to its answer (200 only)",
            registry=self.registry, buckets=LATENCY_BUCKETS)
        self.batch_histogram = Histogram(
            "rmplugins_batch_size_samples", "Samples in one scoring call", registry=self.registry,
            buckets=BATCH_BUCKETS)
        self.group_wait_histogram = Histogram(
            "rmplugins_group_wait_seconds", "Seconds from a group's first sample to its last (or its timeout)",
            registry=self.registry, buckets=LATENCY_BUCKETS)

    def error(self, status: int) -> None:
        self.errors[str(status)] = self.errors.get(str(status), 0) + 1

    def refused(self, kind: str) -> None:
        self.refusals[kind] = self.refusals.get(kind, 0) + 1

    def answered(self, seconds: float) -> None:
        self.latencies.append(seconds)
        self.latency_histogram.observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        """One batch of ``size`` samples ran in ``seconds``."""
        self.model_seconds += seconds
        self.batches += 1
        self.batched_samples += size
        self.max_batch = max(self.max_batch, size)
        self.batch_sizes.append(size)
        self.batch_histogram.observe(size)

    def group_closed(self, complete: bool, size: int, waited: float) -> None:
        if complete:
            self.groups_completed += 1
        else:
            self.groups_partial += 1
        self.group_wait_histogram.observe(waited)

    def snapshot(self, queue_samples: int, groups_waiting: int | None = None) -> dict:
        lat = sorted(self.latencies)

        def pct(q):
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3) if lat else None

        out = {
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
            "samples_rejected": self.rejected,
            "samples_fallback_reward": self.fallback_rewards,
            "refusals": dict(self.refusals),
            "template_fallbacks": self.fallbacks,
            "template_refused": self.template_refused,
            "template_builtin": dict(self.template_builtin),
        }
        if groups_waiting is not None:
            out["groups"] = {"waiting": groups_waiting, "completed": self.groups_completed,
                             "timed_out": self.groups_partial + self.groups_expired, "partial": self.groups_partial,
                             "expired": self.groups_expired, "retries": self.group_retries,
                             "spills": self.group_spills}
        return out


class ServiceCollector:
    """Reads the service's numbers at scrape time (``prometheus_client``'s custom-collector interface)."""

    def __init__(self, service: Any):
        self.service = service

    def collect(self):
        service = self.service
        m: Metrics = service.metrics

        def counter(name, doc, value, labels=None):
            family = CounterMetricFamily(f"rmplugins_{name}", doc, labels=list(labels or {}))
            family.add_metric(list((labels or {}).values()), value)
            return family

        def gauge(name, doc, value):
            family = GaugeMetricFamily(f"rmplugins_{name}", doc)
            family.add_metric([], value)
            return family

        yield counter("requests", "Requests received", m.requests)
        yield counter("samples", "Samples received", m.samples)
        errors = CounterMetricFamily("rmplugins_request_errors", "Requests answered with an error, by status",
                                     labels=["status"])
        for status, n in sorted(m.errors.items()):
            errors.add_metric([status], n)
        yield errors
        yield counter("client_disconnects", "Clients gone before their answer", m.disconnects)
        yield counter("samples_rejected", "Samples the model rejected (null in a partial answer, or the fallback "
                      "reward)", m.rejected)
        yield counter("samples_fallback_reward", "Samples the model rejected, answered with --fallback-reward",
                      m.fallback_rewards)
        refusals = CounterMetricFamily("rmplugins_refusals", "Samples the model refused (null, the fallback reward, "
                                       "or a 422/408), by kind (rmplugins.refusals)", labels=["kind"])
        for kind, n in sorted(m.refusals.items()):
            refusals.add_metric([kind], n)
        yield refusals
        yield counter("batches", "Scoring calls", m.batches)
        yield counter("model_seconds", "Seconds spent in scoring calls", m.model_seconds)
        yield gauge("queue_samples", "Samples waiting for a scoring call", service.batcher.queued)
        yield counter("template_fallbacks", "Samples scored as plain text although a policy template was given",
                      m.fallbacks)
        yield counter("template_refused", "Chat-templated samples no template recovered (refused)",
                      m.template_refused)
        engine = service.rm.backend.metrics().get("engine") or {}
        for name, doc in (("tokens_requested", "Tokens the samples hold (one forward per sequence)"),
                          ("tokens_floor", "The unique-token floor: each distinct prefix once"),
                          ("tokens_processed", "Tokens that went through the backbone"),
                          ("tokens_padded", "Rows x width summed over forwards (padding included)"),
                          ("prefix_cache_hits", "Prefixes taken from the prompt cache instead of run again"),
                          ("tokens_from_cache", "Tokens of those prefixes")):
            if name in engine:
                yield counter(name, doc, engine[name])
        cache = service.rm.backend.metrics().get("prompt_cache") or {}
        if cache:
            yield gauge("prompt_cache_tokens", "Tokens held by the prompt cache", cache.get("held_tokens", 0))
        judge = service.rm.metrics().get("judge")
        if judge:
            yield counter("judge_verdicts", "Judgements asked of a generative judge", judge.get("judged", 0))
            yield counter("judge_no_verdict", "Judgements whose answer held no verdict", judge.get("no_verdict", 0))
        groups = service.groups
        if groups is not None:
            yield gauge("groups_waiting", "Groups waiting for samples (--group-size)", len(groups.waiting))
            yield counter("groups_completed", "Groups that got all their samples", m.groups_completed)
            timed_out = CounterMetricFamily("rmplugins_groups_timed_out", "Groups that reached --group-timeout",
                                            labels=["outcome"])
            timed_out.add_metric(["ranked_partial"], m.groups_partial)
            timed_out.add_metric(["expired_408"], m.groups_expired)
            yield timed_out
            yield counter("group_retries", "Retried samples attached to their first arrival", m.group_retries)
            yield counter("group_spills", "Groups opened right after the same key's group completed (more than "
                          "--group-size samples of a prompt)", m.group_spills)
            yield gauge("group_waiting_samples", "Samples waiting for their groups", groups.waiting_samples)


def prometheus_text(service: Any) -> tuple[bytes, str]:
    """The exposition body and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics = service.metrics
    if not getattr(metrics, "_collector_registered", False):
        metrics.registry.register(ServiceCollector(service))
        metrics._collector_registered = True
    return generate_latest(metrics.registry), CONTENT_TYPE_LATEST
