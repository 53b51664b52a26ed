"""Reward models as TRL ``reward_funcs``: plain callables (TRL runs any ``nn.Module`` as a one-logit classifier).

``RewardFunction`` scores in-process: pointwise kinds (``bt``, ``armorm``) give their reward per completion;
group-aware kinds (``pair_pm``, ``pairrm``, ``gpm``) score each completion against the other completions of its
prompt (``rm.rank``: mean win probability, or GPM's GPO score), or against its online-DPO partner.
``AsyncRemoteRewardFunction`` asks a reward server (``rmplugins serve``) so the model can live on other GPUs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..inputs import to_conversation
from .grouping import all_gather_objects, dist_info, group_indices, is_pair_layout, layout_hint, prompt_key

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


def input_reasons(prompts: Sequence[Any], completions: Sequence[Any]) -> dict[int, str]:
    """Rows whose prompt or completion breaks the input contract, with the reason (they get None, not an error:
    one bad row must not stop a training step)."""
    reasons = {}
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        try:
            to_conversation(prompt, completion, i)
        except ValueError as err:
            reasons[i] = str(err)
    return reasons


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
        if clip is not None and not isinstance(clip, (tuple, list)):
            clip = (-abs(float(clip)), abs(float(clip)))
        if clip is not None and (len(clip) != 2 or clip[0] >= clip[1]):
            raise ValueError(f"clip must be a positive number c (for [-c, c]) or a (low, high) pair, got {clip!r}")
        self.normalize = bool(normalize)
        self.clip = tuple(float(c) for c in clip) if clip is not None else None
        self.length_penalty = float(length_penalty)
        self.stats = _RunningStats()
        self._breakdown: dict[str, list[float]] = defaultdict(list)
        self._breakdown_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r})"

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


class RewardFunction(_BaseRewardFunction):
    """A reward model as a TRL reward function (``reward_funcs=[RewardFunction("RLHFlow/ArmoRM-...")]``).

    Args:
        model: a path or hub id (loaded with ``rmplugins.load_reward_model``) or a loaded reward model.
        name: the metric name TRL uses (``rewards/<name>/mean``); default ``<kind>_<model dir>``, suffixed
            ``_2``, ``_3``... when several instances share it.
        num_generations: group size of GRPO/RLOO (pass the trainer's value); None groups runs of identical
            prompts.
        method: ranking method of pairwise kinds, ``"round_robin"`` (default: every completion judged against
            every other, so rewards are comparable within the group) or ``"tournament"`` (at most 2n - 3
            comparisons; for large groups).
        layout: ``"auto"`` (online DPO's pair blocks are detected), ``"groups"`` or ``"pairs"``.
        normalize: divide by a running std after subtracting a running mean (all rewards seen so far).
        clip: ``c`` for [-c, c] or ``(low, high)``, applied last.
        length_penalty: subtracted per completion token (TRL's ``completion_ids``).
        objective_weights: ArmoRM only: ``{objective_name: weight}`` (or 19 weights) replacing the gating
            network, reward = sum_k w_k * objective_reward_k (steer by objective).
        top_objectives: ArmoRM: how many top contributing objectives to show in the completions table.
        distributed: ``"gather"`` (gather groups that straddle processes) or ``"refuse"`` (raise with the batch
            settings that fix it).
        kind, device, dtype, **load_options: passed to ``load_reward_model`` when ``model`` is a path.
    """

    def __init__(self, model: Any, *, name: str | None = None, num_generations: int | None = None,
                 method: str | None = None, layout: str = "auto", normalize: bool = False,
                 clip: float | tuple[float, float] | None = None, length_penalty: float = 0.0,
                 objective_weights: dict[str, float] | Sequence[float] | None = None, top_objectives: int = 3,
                 distributed: str = "gather", kind: str | None = None, device: Any = None, dtype: Any = None,
                 **load_options: Any):
        super().__init__(normalize=normalize, clip=clip, length_penalty=length_penalty)
        if isinstance(model, (str, os.PathLike)):
            from .. import load_reward_model

            model = load_reward_model(str(model), kind=kind, device=device, dtype=dtype, **load_options)
        elif load_options or kind or dtype:
            raise ValueError("kind/dtype/load options apply only when `model` is a path or hub id; got a loaded "
                             f"{type(model).__name__}")
        elif device is not None:
            model.to(device)
        for attr in ("kind", "rank", "compare"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a path, hub id or an rmplugins reward model, got {type(model)!r}")
        if isinstance(model, torch.nn.Module):
            raise TypeError("pass the rmplugins reward model, not a torch module: TRL treats modules as classifiers")
        if layout not in ("auto", "groups", "pairs"):
            raise ValueError(f"layout must be 'auto', 'groups' or 'pairs', got {layout!r}")
        if distributed not in ("gather", "refuse"):
            raise ValueError(f"distributed must be 'gather' or 'refuse', got {distributed!r}")
        if num_generations is not None and int(num_generations) < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}")
        self.model = model
        self.kind = model.kind
        self.pointwise = bool(model.pointwise)
        self.num_generations = int(num_generations) if num_generations else None
        methods = tuple(getattr(model, "rank_methods", ()))
        if method is not None and self.pointwise:
            raise ValueError(f"method={method!r} applies to pairwise kinds; {self.kind!r} is pointwise")
        if method is None and "round_robin" in methods:
            method = "round_robin"
        if method is not None and methods and method not in methods:
            raise ValueError(f"method {method!r} is not available for kind {self.kind!r}; choose one of "
                             f"{list(methods)}")
        self.method = method
        self.layout = layout
        self.distributed = distributed
        self.top_objectives = int(top_objectives)
        self.objective_weights = self._objective_weights(objective_weights)
        base = name or f"{self.kind}_{_sanitize(os.path.basename(str(model.name_or_path).rstrip('/')))}"
        self.__name__ = name if name else _unique_name(base)
        self._placement: Any = None  # set by CoLocationCallback
        self.calls = 0
        self.last_call: dict[str, Any] | None = None  # inputs and rewards of the latest call, for inspection

    # -------------------------------------------------------------- setup helpers
    def _objective_weights(self, weights):
        if weights is None:
            return None
        if self.kind != "armorm":
            raise ValueError(f"objective_weights apply to ArmoRM only, not kind {self.kind!r}")
        names = self._objective_names()
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValueError(f"unknown ArmoRM objectives {unknown}; the objectives are {names}")
            vec = [float(weights.get(n, 0.0)) for n in names]
        else:
            vec = [float(w) for w in weights]
            if len(vec) != len(names):
                raise ValueError(f"objective_weights needs {len(names)} weights (one per objective), got {len(vec)}")
        return torch.tensor(vec, dtype=torch.float32)

    def _objective_names(self) -> list[str]:
        return list(self.model.objective_names)

    def check_trainer_args(self, args: Any, num_processes: int | None = None) -> None:
        """Fail at start-up when groups would straddle processes and ``distributed='refuse'``; warn on a
        ``num_generations`` that disagrees with the trainer's."""
        g = getattr(args, "num_generations", None)
        if self.num_generations and g and g != self.num_generations:
            raise ValueError(f"{self.__name__}: num_generations={self.num_generations} but the trainer uses "
                             f"num_generations={g}; pass the same value")
        g = self.num_generations or g
        if num_processes is None:
            num_processes = dist_info()[1]
        local = getattr(args, "per_device_train_batch_size", 0) * (getattr(args, "steps_per_generation", 1) or 1)
        if (not self.pointwise and self.distributed == "refuse" and num_processes > 1 and g and local
                and local % g):
            raise ValueError(
                f"{self.__name__}: each process scores {local} completions (per_device_train_batch_size * "
                f"steps_per_generation) but a group has num_generations={g}, so groups straddle processes; "
                + layout_hint(g))

    # -------------------------------------------------------------- the call TRL makes
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Sequence | None = None,
                 log_metric: Callable | None = None, log_extra: Callable | None = None, trainer_state: Any = None,
                 **kwargs: Any) -> list[float | None]:
        """Rewards for ``completions`` (one per row; None where a row cannot be scored)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{self.__name__}: got {len(prompts)} prompts but {len(completions)} completions")
        self.calls += 1
        n = len(prompts)
        reasons = input_reasons(prompts, completions)
        metrics: dict[str, float] = {}
        placement = self._placement
        if placement is not None:
            placement.acquire(self)
        try:
            if self.pointwise:
                raw = self._pointwise(prompts, completions, reasons, metrics, log_extra)
            else:
                in_trainer = log_metric is not None or trainer_state is not None
                raw = self._group_aware(prompts, completions, reasons, metrics, in_trainer,
                                        own_layout=log_metric is not None)
        finally:
            if placement is not None:
                placement.release(self)
        valid = [r for r in raw if r is not None]
        if valid and (self.normalize or self.clip is not None or self.length_penalty):
            metrics["raw_mean"] = sum(valid) / len(valid)
        rewards, shaping = self._shape(raw, completions, completion_ids, reduce_stats=True)
        metrics.update(shaping)
        missing = [i for i, r in enumerate(rewards) if r is None]
        if missing:
            first = missing[0]
            logger.warning("%s: %d of %d rows have no reward (None); row %d: %s", self.__name__, len(missing), n,
                           first, reasons.get(first, "not scorable"))
            metrics["none_frac"] = len(missing) / max(n, 1)
        self._record(metrics, log_metric)
        self.last_call = {"prompts": list(prompts), "completions": list(completions), "rewards": list(rewards),
                          "raw": raw, "reasons": reasons,
                          "completion_ids": list(completion_ids) if completion_ids is not None else None}
        return rewards

    # -------------------------------------------------------------- pointwise kinds
    def _pointwise(self, prompts, completions, reasons, metrics, log_extra) -> list[float | None]:
        """The model's reward per row (rows it cannot score get None and their reason, in the same call); with
        ArmoRM's objectives (``extras``) also their means, the steering weights and the top-objectives column."""
        n = len(prompts)
        idx = [i for i in range(n) if i not in reasons]
        raw: list[float | None] = [None] * n
        if not idx:
            return raw
        rows = self.model.score_rows([prompts[i] for i in idx], [completions[i] for i in idx])
        for j, reason in rows.reasons.items():
            reasons[idx[j]] = reason
        scored = [j for j, score in enumerate(rows.scores) if score is not None]
        for j in scored:
            raw[idx[j]] = rows.scores[j]
        if "coefficients" not in rows.extras or not scored:
            return raw
        names = self._objective_names()
        obj = torch.stack([rows.extras["rewards"][j] for j in scored]).float()
        if self.objective_weights is not None:  # steering: a fixed mix of the objectives replaces the gate
            contrib = obj * self.objective_weights
            for j, s in zip(scored, (obj @ self.objective_weights).tolist()):
                raw[idx[j]] = float(s)
        else:
            contrib = obj * torch.stack([rows.extras["coefficients"][j] for j in scored]).float()
        for k, name in enumerate(names):
            metrics[f"objective/{name}"] = float(obj[:, k].mean())
        if log_extra is not None and self.top_objectives > 0:
            column = [""] * n
            top = min(self.top_objectives, len(names))
            for row, j in enumerate(scored):
                best = torch.topk(contrib[row], top).indices.tolist()
                column[idx[j]] = ", ".join(f"{names[k]}={contrib[row, k].item():+.3f}" for k in best)
            log_extra(f"{self.__name__}/top_objectives", column)
        return raw

    # -------------------------------------------------------------- group-aware kinds
    def _group_aware(self, prompts, completions, reasons, metrics, in_trainer, own_layout) -> list[float | None]:
        keys = [prompt_key(p) for p in prompts]
        layout = self.layout
        if layout == "auto":
            # TRL's online DPO passes no log_metric; GRPO/RLOO always do and never use the pair blocks.
            layout = "pairs" if (not own_layout and not self.num_generations and is_pair_layout(keys)) else "groups"
        if layout == "pairs":
            return self._pairs(prompts, completions, keys, reasons, metrics)
        rank, world = dist_info()
        if world > 1 and in_trainer:
            return self._groups_distributed(prompts, completions, reasons, metrics, rank)
        return self._score_groups(prompts, completions, keys, reasons, metrics, range(len(prompts)))

    def _pairs(self, prompts, completions, keys, reasons, metrics) -> list[float | None]:
        n = len(prompts)
        if n % 2 or any(keys[i] != keys[i + n // 2] for i in range(n // 2)):
            raise ValueError(f"{self.__name__}: layout='pairs' needs rows i and i + N/2 to share a prompt "
                             "(online DPO's layout)")
        b = n // 2
        out: list[float | None] = [None] * n
        idx = [i for i in range(b) if i not in reasons and i + b not in reasons]
        for i in range(b):
            if i not in idx:
                for j in (i, i + b):
                    reasons.setdefault(j, f"its pair partner (row {i if j != i else i + b}) could not be scored")
        probs: list = []
        if idx:  # pairs the model cannot render get None and their reason, the others are judged in one call
            rows = self.model.compare_rows([prompts[i] for i in idx], [completions[i] for i in idx],
                                           [completions[i + b] for i in idx])
            probs = rows.scores
            for j, reason in rows.reasons.items():
                reasons[idx[j]] = reasons[idx[j] + b] = reason
        if idx:
            for i, p in zip(idx, probs):
                if p is None:
                    continue
                out[i], out[i + b] = float(p), 1.0 - float(p)
            metrics["comparisons"] = float(len(idx))
        return out

    def _score_groups(self, prompts, completions, keys, reasons, metrics, wanted) -> list[float | None]:
        """Score every group holding a row of ``wanted``; returns rewards for all rows (None elsewhere)."""
        out: list[float | None] = [None] * len(prompts)
        wanted = set(wanted)
        comparisons, sizes = 0, []
        ready = []  # (group, its valid rows)
        for group in group_indices(keys, self.num_generations):
            if not wanted.intersection(group):
                continue
            valid = [i for i in group if i not in reasons]
            if len(valid) < 2:
                for i in group:
                    reasons.setdefault(i, "no other completion of its prompt in the batch to compare against "
                                          "(group of one); set num_generations or keep a prompt's completions "
                                          "together")
                continue
            reason = self.model.check_group(prompts[valid[0]], [completions[i] for i in valid])
            if reason is not None:  # a group the model's format cannot render: None with the reason, before the call
                for i in group:
                    reasons.setdefault(i, reason)
                continue
            ready.append((group, valid))
        # all groups together: one model call per tournament round for the whole batch
        rankings = self.model.rank_many([prompts[v[0]] for _, v in ready],
                                        [[completions[i] for i in v] for _, v in ready], method=self.method)
        for (_, valid), ranking in zip(ready, rankings):
            for i, s in zip(valid, ranking.scores):
                out[i] = float(s)
            comparisons += int(getattr(ranking, "comparisons", 0) or 0)
            sizes.append(len(valid))
        if sizes:
            metrics["comparisons"] = float(comparisons)
            metrics["group_size"] = sum(sizes) / len(sizes)
        return out

    def _groups_distributed(self, prompts, completions, reasons, metrics, rank) -> list[float | None]:
        """Each process holds a contiguous slice of the generation batch, in rank order. Gather the slices when a
        group may straddle two of them, score the groups that touch this slice, return this slice."""
        n = len(prompts)
        g = self.num_generations
        lengths = all_gather_objects(n)
        straddle = g is None or any(length % g for length in lengths)
        keys = [prompt_key(p) for p in prompts]
        if not straddle:
            return self._score_groups(prompts, completions, keys, reasons, metrics, range(n))
        if self.distributed == "refuse":
            raise RuntimeError(f"{self.__name__}: process slices of {lengths} completions cut groups of "
                               f"num_generations={g} across processes; " + layout_hint(g))
        parts = all_gather_objects((list(prompts), list(completions)))
        all_prompts = [p for part in parts for p in part[0]]
        all_completions = [c for part in parts for c in part[1]]
        offset = sum(lengths[:rank])
        all_reasons = input_reasons(all_prompts, all_completions)
        all_reasons.update({offset + i: reason for i, reason in reasons.items()})  # this process's own wording
        all_keys = [prompt_key(p) for p in all_prompts]
        scored = self._score_groups(all_prompts, all_completions, all_keys, all_reasons, metrics,
                                    range(offset, offset + n))
        for i in range(n):
            if offset + i in all_reasons:
                reasons.setdefault(i, all_reasons[offset + i])
        metrics["gathered"] = 1.0
        return scored[offset:offset + n]


class RemoteRewardError(RuntimeError):
    """The reward server refused the request (401/403/4xx) or was never reachable: raised, not turned into None."""


def _raise_for_status(url: str, status: int, text: str) -> None:
    if status in (401, 403):
        raise RemoteRewardError(f"reward server {url} answered {status} (API key missing or wrong): pass "
                                f"api_key= the key the server was started with (--api-key); server said: {text}")
    if 400 <= status < 500 and status not in (408, 429):
        raise RemoteRewardError(f"reward server {url} refused the request ({status}): {text}")
    raise RuntimeError(f"HTTP {status}: {text}")


class AsyncRemoteRewardFunction(_BaseRewardFunction):
    """An async TRL reward function that asks a remote reward server (``rmplugins serve``, OpenRLHF protocol).

    GRPO/RLOO run async reward functions in a background event loop, so scoring overlaps with other rewards and
    the reward model lives on other GPUs or hosts. The batch is sent in chunks of ``batch_size`` rows, in
    parallel; a chunk that still fails after ``retries`` gives None (TRL: NaN, no advantage) with a warning.

    ``policy_tokenizer`` (a path or tokenizer): render conversational prompts with the policy's chat template,
    for a server started with ``--policy-tokenizer`` (it recovers the whole conversation). Without it the
    server gets the last user message as the prompt text.
    """

    def __init__(self, url: str, *, name: str | None = None, api_key: str | None = None, batch_size: int = 32,
                 timeout: float = 180.0, retries: int = 3, policy_tokenizer: Any = None, normalize: bool = False,
                 clip: float | tuple[float, float] | None = None, length_penalty: float = 0.0):
        super().__init__(normalize=normalize, clip=clip, length_penalty=length_penalty)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL of the reward server, got {url!r}")
        if not url.rstrip("/").endswith("/get_reward"):
            url = url.rstrip("/") + "/get_reward"
        self.url = url
        self.api_key = api_key
        self.batch_size = max(1, int(batch_size))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        if isinstance(policy_tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            policy_tokenizer = AutoTokenizer.from_pretrained(str(policy_tokenizer))
        self.policy_tokenizer = policy_tokenizer
        host = url.split("//", 1)[1].split("/", 1)[0]
        self.__name__ = name or _unique_name(f"remote_{_sanitize(host)}")
        self._warned_context = False
        self._reached = False  # until the server first answers, an unreachable server is an error, not a None

    def _texts(self, prompt: Any, completion: Any) -> tuple[str, str]:
        response = _response_text(completion)
        if isinstance(prompt, str):
            return prompt + response, prompt
        if self.policy_tokenizer is not None:
            text = self.policy_tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            return text + response, text
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if len(prompt) > 1 and not self._warned_context:
            logger.warning("%s: without policy_tokenizer only the last user message is sent as the prompt; pass "
                           "policy_tokenizer= (and start the server with --policy-tokenizer) to keep the "
                           "conversation", self.__name__)
            self._warned_context = True
        text = users[-1] if users and isinstance(users[-1], str) else ""
        return text + response, text

    async def _post(self, session: Any, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if session is not None:
                    async with session.post(self.url, json=body, headers=headers) as resp:
                        if resp.status != 200:
                            _raise_for_status(self.url, resp.status, (await resp.text())[:300])
                        answer = await resp.json()
                else:
                    answer = await asyncio.to_thread(self._post_blocking, body, headers)
                self._reached = True
                return answer
            except RemoteRewardError:
                raise  # the server refused the request: retrying will not change that
            except Exception as err:  # noqa: BLE001 - network errors and 5xx/429 are retried
                last = err
                if attempt < self.retries:
                    await asyncio.sleep(min(0.5 * 2 ** attempt, 5.0))
        if not self._reached:  # never reached: a wrong URL or a server that is not up, not a passing hiccup
            raise RemoteRewardError(f"{self.__name__}: the reward server {self.url} could not be reached "
                                    f"({self.retries + 1} attempts; last error: {last}); start it (rmplugins serve) "
                                    "or fix the URL")
        raise RuntimeError(f"reward server {self.url} failed after {self.retries + 1} attempts: {last}")

    def _post_blocking(self, body: dict, headers: dict) -> dict:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            _raise_for_status(self.url, err.code, err.read()[:300].decode(errors="replace"))

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       completion_ids: Sequence | None = None, log_metric: Callable | None = None,
                       log_extra: Callable | None = None, trainer_state: Any = None,
                       **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{self.__name__}: got {len(prompts)} prompts but {len(completions)} completions")
        n = len(prompts)
        labels = kwargs.get("label") or kwargs.get("labels") or kwargs.get("answer") or [""] * n
        queries, ptexts = zip(*(self._texts(p, c) for p, c in zip(prompts, completions))) if n else ((), ())
        chunks = [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        try:
            import aiohttp
        except ImportError:  # the stdlib fallback runs each request in a worker thread
            aiohttp = None

        async def run(session):
            return await asyncio.gather(*(
                self._post(session, {"query": [queries[i] for i in ch], "prompts": [ptexts[i] for i in ch],
                                     "labels": [labels[i] if i < len(labels) else "" for i in ch]})
                for ch in chunks), return_exceptions=True)

        if aiohttp is not None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
                results = await run(session)
        else:
            results = await run(None)
        fatal = next((r for r in results if isinstance(r, RemoteRewardError)), None)
        if fatal is not None:
            raise fatal  # training on without rewards would be silent: a wrong key, URL or request is an error
        raw: list[float | None] = [None] * n
        extras: dict[str, list[float]] = defaultdict(list)
        failure = None
        for ch, res in zip(chunks, results):
            if isinstance(res, BaseException):
                failure = res
                continue
            values = res.get("rewards", res.get("scores"))
            if not isinstance(values, list) or len(values) != len(ch):
                failure = RuntimeError(f"server answered {str(res)[:200]} for {len(ch)} rows")
                continue
            for i, v in zip(ch, values):
                raw[i] = None if v is None else float(v)
            for k, vals in (res.get("extra_logs") or {}).items():
                if isinstance(vals, list):
                    extras[k].extend(float(v) for v in vals if isinstance(v, (int, float)))
        metrics = {f"server/{k}": sum(v) / len(v) for k, v in extras.items() if v}
        valid = [r for r in raw if r is not None]
        if valid and (self.normalize or self.clip is not None or self.length_penalty):
            metrics["raw_mean"] = sum(valid) / len(valid)
        # statistics stay local: collectives do not belong in TRL's background event loop
        rewards, shaping = self._shape(raw, completions, completion_ids, reduce_stats=False)
        metrics.update(shaping)
        if failure is not None:
            missing = sum(r is None for r in rewards)
            logger.warning("%s: %d of %d rows have no reward (None): %s", self.__name__, missing, n, failure)
            metrics["none_frac"] = missing / max(n, 1)
        self._record(metrics, log_metric)
        return rewards
