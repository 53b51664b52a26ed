"""What every rmplugins TRL reward function shares: a distinct ``__name__`` (TRL's metric name), the shaping of raw
rewards (running normalisation, clipping, a length penalty) and how metrics reach TRL's ``log_metric``."""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..options import real_number
from ..refusals import REJECTED
from .grouping import all_gather_objects, dist_info

logger = logging.getLogger("rmplugins.trl")

_NAMES: dict[str, int] = defaultdict(int)
_NAMES_LOCK = threading.Lock()


def _unique_name(base: str) -> str:
    """``base`` the first time, then ``base_2``, ``base_3``...: TRL keys its metrics by this name."""
    with _NAMES_LOCK:
        _NAMES[base] += 1
        count = _NAMES[base]
    return base if count == 1 else f"{base}_{count}"


def _sanitize(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in text).strip("-") or "model"


def _response_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    for m in reversed(list(completion or [])):
        if isinstance(m, dict) and m.get("role") == "assistant":
            c = m.get("content")
            return c if isinstance(c, str) else ""
    return ""


def none_by_kind(missing: Sequence[int], kinds: Mapping[int, str], n: int) -> tuple[str, dict[str, float]]:
    """Rows without a reward (``missing``, of ``n``) by their refusal kind (``kinds``; ``rejected`` where a row has
    none): the warning's summary ("2 unreadable, 1 no_verdict") and TRL's metrics, ``none_frac`` and
    ``none_frac/<kind>``."""
    counts = Counter(kinds.get(row, REJECTED) for row in missing)
    summary = ", ".join(f"{count} {kind}" for kind, count in counts.most_common())
    n = max(n, 1)
    return summary, {"none_frac": len(missing) / n} | {f"none_frac/{k}": c / n for k, c in counts.items()}


class _RunningStats:
    """Running mean/std over every reward seen (Chan's parallel update), for reward normalisation."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, count: int, total: float, total_sq: float) -> None:
        if count == 0:
            return
        b_mean = total / count
        b_m2 = max(total_sq - count * b_mean * b_mean, 0.0)
        n = self.count + count
        delta = b_mean - self.mean
        self.mean += delta * count / n
        self.m2 += b_m2 + delta * delta * self.count * count / n
        self.count = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0


class _BaseRewardFunction:
    """Shared shaping (length penalty, normalisation, clipping), names and breakdown bookkeeping."""

    __name__: str

    def __init__(self, *, normalize: bool, clip: float | tuple[float, float] | None, length_penalty: float):
        what = "a positive number c (for [-c, c]) or a (low, high) pair"
        if clip is not None and not isinstance(clip, (tuple, list)):
            c = real_number("clip", clip, f": {what}")
            if c <= 0:
                raise ValueError(f"clip must be {what}, got {clip!r}")
            clip = (-c, c)
        if clip is not None:
            if len(clip) != 2:
                raise ValueError(f"clip must be {what}, got {clip!r}")
            clip = (real_number("clip", clip[0], f": {what}"), real_number("clip", clip[1], f": {what}"))
            if clip[0] >= clip[1]:
                raise ValueError(f"clip must be {what}, got {clip!r}")
        if not isinstance(normalize, bool):  # normalize="false" would have normalised
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        self.normalize = normalize
        self.clip = clip
        self.length_penalty = real_number("length_penalty", length_penalty,
                                          " (subtracted per completion token; 0 turns it off)")
        self.stats = _RunningStats()
        self._breakdown: dict[str, list[float]] = defaultdict(list)
        self._breakdown_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"

    def __getstate__(self) -> dict:
        """Picklable (TRL's async GRPO sends reward functions to a spawned process): the lock is not sent."""
        state = dict(self.__dict__)
        state.pop("_breakdown_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._breakdown_lock = threading.Lock()

    # -------------------------------------------------------------- breakdown (read by RewardBreakdownCallback)
    def _record(self, metrics: dict[str, float], log_metric: Callable | None) -> None:
        with self._breakdown_lock:
            for k, v in metrics.items():
                self._breakdown[k].append(float(v))
        if log_metric is not None:
            for k, v in metrics.items():
                log_metric(f"rewards/{self.__name__}/{k}", float(v))

    def pop_breakdown(self) -> dict[str, float]:
        """Mean of each breakdown metric recorded since the last pop, keyed ``<name>/<metric>``."""
        with self._breakdown_lock:
            out = {f"{self.__name__}/{k}": sum(v) / len(v) for k, v in self._breakdown.items() if v}
            self._breakdown.clear()
        return out

    # -------------------------------------------------------------- shaping
    def _shape(self, raw: list[float | None], completions: Sequence[Any], completion_ids: Sequence | None,
               reduce_stats: bool) -> tuple[list[float | None], dict[str, float]]:
        """Length penalty, then running-mean/std normalisation, then clipping. None stays None."""
        idx = [i for i, r in enumerate(raw) if r is not None]
        out: list[float | None] = list(raw)
        metrics: dict[str, float] = {}
        if self.length_penalty and idx:
            lengths = {}
            for i in idx:
                if completion_ids is not None and i < len(completion_ids) and completion_ids[i] is not None:
                    lengths[i] = len(completion_ids[i])
                else:  # called outside a trainer: whitespace words stand in for tokens
                    lengths[i] = len(_response_text(completions[i]).split())
            for i in idx:
                out[i] = out[i] - self.length_penalty * lengths[i]
            metrics["length_penalty"] = -self.length_penalty * sum(lengths.values()) / len(idx)
        if self.normalize:
            vals = [out[i] for i in idx]
            local = (len(vals), sum(vals), sum(v * v for v in vals))
            _, world = dist_info()
            if reduce_stats and world > 1:  # every process keeps the same running statistics
                parts = all_gather_objects(local)
                local = tuple(sum(p[k] for p in parts) for k in range(3))
            self.stats.update(*local)
            mean, std = self.stats.mean, self.stats.std
            for i in idx:
                out[i] = (out[i] - mean) / (std + 1e-6)
            metrics["running_mean"], metrics["running_std"] = mean, std
        if self.clip is not None and idx:
            lo, hi = self.clip
            clipped = sum(1 for i in idx if not lo <= out[i] <= hi)
            for i in idx:
                out[i] = min(max(out[i], lo), hi)
            metrics["clipped_frac"] = clipped / len(idx)
        return out, metrics
