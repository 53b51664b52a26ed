"""Reward models as TRL ``reward_funcs``: plain callables (TRL runs any ``nn.Module`` as a one-logit classifier).

``RewardFunction`` scores in-process: pointwise kinds (``bt``, ``armorm``) give their reward per completion;
group-aware kinds (``pair_pm``, ``pairrm``, ``gpm``) score each completion against the other completions of its
prompt (``rm.rank``: mean win probability, or GPM's GPO score), or against its online-DPO partner.
``AsyncRemoteRewardFunction`` (:mod:`.remote`) asks a reward server instead.

A reward goes one way down: ``RewardFunction.__call__`` -> ``_pointwise`` (``rm.score_rows``) or ``_group_aware``
(``rm.rank_many`` / ``rm.compare_rows``) -> the family's per-row encode and one batched forward -> the engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..inputs import to_conversation
from ..loading import load_reward_model
from ..options import real_number, whole_number
from ..refusals import GROUP_INCOMPLETE, NO_VERDICT, REJECTED, UNREADABLE, kind_of
from .grouping import all_gather_objects, dist_info, group_indices, is_pair_layout, layout_hint, prompt_key
from .shaping import _BaseRewardFunction, _sanitize, _unique_name, none_by_kind

logger = logging.getLogger("rmplugins.trl")


class Refusals(dict):
    """The rows of a call without a reward: row -> why (``last_call["reasons"]``), and ``kinds``: row -> its
    :data:`rmplugins.refusals.KINDS` entry, which TRL's logs count (``none_frac/<kind>``). A row keeps the first
    reason it is given."""

    def __init__(self):
        super().__init__()
        self.kinds: dict[int, str] = {}

    def refuse(self, row: int, reason: str, kind: str) -> None:
        if row not in self:
            self[row], self.kinds[row] = reason, kind

    def refuse_error(self, row: int, err: BaseException, default: str) -> None:
        """``err``'s message and kind (``default`` where it carries none)."""
        self.refuse(row, str(err), kind_of(err, default))


def input_reasons(prompts: Sequence[Any], completions: Sequence[Any]) -> Refusals:
    """Rows whose prompt or completion breaks the input contract, with the reason (they get None, not an error:
    one bad row must not stop a training step)."""
    reasons = Refusals()
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        try:
            to_conversation(prompt, completion, i)
        except ValueError as err:
            reasons.refuse_error(i, err, UNREADABLE)
    return reasons


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
        length_penalty: subtracted per completion token (TRL's ``completion_ids``; called without them,
            per whitespace-separated word).
        objective_weights: ArmoRM only: ``{objective_name: weight}`` (or 19 weights) replacing the gating
            network, reward = sum_k w_k * objective_reward_k (steer by objective).
        top_objectives: ArmoRM only: how many top contributing objectives to show in the completions table
            (default 3; 0 shows none).
        distributed: ``"gather"`` (gather groups that straddle processes) or ``"refuse"`` (raise with the batch
            settings that fix it).
        kind, device, dtype, **load_options: passed to ``load_reward_model`` when ``model`` is a path.
    """

    def __init__(self, model: Any, *, name: str | None = None, num_generations: int | None = None,
                 method: str | None = None, layout: str = "auto", normalize: bool = False,
                 clip: float | tuple[float, float] | None = None, length_penalty: float = 0.0,
                 objective_weights: dict[str, float] | Sequence[float] | None = None, top_objectives: int | None = None,
                 distributed: str = "gather", kind: str | None = None, device: Any = None, dtype: Any = None,
                 **load_options: Any):
        super().__init__(normalize=normalize, clip=clip, length_penalty=length_penalty)
        if layout not in ("auto", "groups", "pairs"):  # the options first: a model may take minutes to load
            raise ValueError(f"layout must be 'auto', 'groups' or 'pairs', got {layout!r}")
        if distributed not in ("gather", "refuse"):
            raise ValueError(f"distributed must be 'gather' or 'refuse', got {distributed!r}")
        if num_generations is not None:
            num_generations = whole_number("num_generations", num_generations, 1,
                                           " (the trainer's GRPOConfig / RLOOConfig num_generations)")
        if isinstance(model, (str, os.PathLike)):
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
        self.model = model
        self.kind = model.kind
        self.pointwise = bool(model.pointwise)
        if num_generations == 1 and not self.pointwise:
            raise ValueError(f"num_generations=1: kind {self.kind!r} rewards a completion against the other "
                             "completions of its prompt, and a group of one has none (every reward would be None); "
                             "pass the trainer's num_generations (2 or more)")
        self.num_generations = num_generations
        methods = tuple(model.rank_methods)
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
        if top_objectives is not None and self.kind != "armorm":
            raise ValueError(f"top_objectives applies to ArmoRM only (its objectives in TRL's completions table), not "
                             f"kind {self.kind!r}")
        self.top_objectives = 3 if top_objectives is None else whole_number("top_objectives", top_objectives, 0)
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
            vec = [real_number(f"objective_weights[{n!r}]", weights.get(n, 0.0)) for n in names]
        else:
            vec = [real_number(f"objective_weights[{i}]", w) for i, w in enumerate(weights)]
            if len(vec) != len(names):
                raise ValueError(f"objective_weights needs {len(names)} weights (one per objective), got {len(vec)}")
        if not any(vec):  # every reward would be 0: nothing to learn from, and no error anywhere else
            raise ValueError("objective_weights are all 0: give at least one objective a weight")
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
        reasons = Refusals()  # row -> why it has no reward, and its kind (filled by the paths below)
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
            # TRL's online DPO (a trainer state, no log_metric) sums a None as 0 and has no way to skip a pair
            online_dpo = trainer_state is not None and log_metric is None
            summary, none_metrics = none_by_kind(missing, reasons.kinds, n)
            logger.warning("%s: %d of %d rows have no reward (None: %s); row %d: %s%s", self.__name__, len(missing),
                           n, summary, first, reasons.get(first, "not scorable"),
                           "; TRL's online DPO counts None as 0 and cannot skip a pair: such a pair is still "
                           "trained (both missing: the first completion chosen)" if online_dpo else "")
            metrics.update(none_metrics)
        self._record(metrics, log_metric)
        self.last_call = {"prompts": list(prompts), "completions": list(completions), "rewards": list(rewards),
                          "raw": raw, "reasons": dict(reasons), "kinds": dict(reasons.kinds),
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
            reasons.refuse(idx[j], reason, rows.kinds.get(j, REJECTED))
        scored = [j for j, score in enumerate(rows.scores) if score is not None]
        for j in scored:
            raw[idx[j]] = rows.scores[j]
        if "step_rewards" in rows.extras and scored:  # a process reward model: how the steps went
            steps = [rows.extras["step_rewards"][j].tolist() for j in scored]
            metrics["steps/mean"] = sum(map(len, steps)) / len(steps)
            metrics["step_reward/mean"] = sum(map(sum, steps)) / sum(map(len, steps))
            metrics["step_reward/min_mean"] = sum(min(s) for s in steps) / len(steps)
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
        for i, reason in (bad := input_reasons(prompts, completions)).items():  # not to join its group's ranking
            reasons.refuse(i, reason, bad.kinds[i])
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
                    partner = i if j != i else i + b
                    reasons.refuse(j, f"its pair partner (row {partner}) could not be scored",
                                   reasons.kinds.get(partner, REJECTED))
        probs: list = []
        if idx:  # pairs the model cannot render get None and their reason, the others are judged in one call
            rows = self.model.compare_rows([prompts[i] for i in idx], [completions[i] for i in idx],
                                           [completions[i + b] for i in idx])
            probs = rows.scores
            for j, reason in rows.reasons.items():
                for row in (idx[j], idx[j] + b):
                    reasons.refuse(row, reason, rows.kinds.get(j, REJECTED))
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
                    reasons.refuse(i, "no other completion of its prompt in the batch to compare against (group "
                                      "of one); set num_generations or keep a prompt's completions together",
                                   GROUP_INCOMPLETE)
                continue
            err = self.model.check_group(prompts[valid[0]], [completions[i] for i in valid])
            if err is not None:  # a group the model's format cannot render: None with the reason, before the call
                for i in group:
                    reasons.refuse_error(i, err, UNREADABLE)
                continue
            ready.append((group, valid))
        # all groups together: one model call per tournament round for the whole batch
        rankings = self.model.rank_rows([prompts[v[0]] for _, v in ready],
                                        [[completions[i] for i in v] for _, v in ready], method=self.method)
        for (group, valid), ranking in zip(ready, rankings):
            if isinstance(ranking, ValueError):  # this group only (a judge without any verdict)
                for i in group:
                    reasons.refuse_error(i, ranking, NO_VERDICT)
                continue
            for i, s in zip(valid, ranking.scores):
                if s is None:
                    reasons.refuse(i, "the judge gave no verdict in any comparison of this completion", NO_VERDICT)
                else:
                    out[i] = float(s)
            comparisons += ranking.comparisons
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
        for i, reason in reasons.items():  # this process's own wording first
            all_reasons.pop(offset + i, None)
            all_reasons.refuse(offset + i, reason, reasons.kinds[i])
        all_keys = [prompt_key(p) for p in all_prompts]
        scored = self._score_groups(all_prompts, all_completions, all_keys, all_reasons, metrics,
                                    range(offset, offset + n))
        for i in range(n):
            if offset + i in all_reasons:
                reasons.refuse(i, all_reasons[offset + i], all_reasons.kinds[offset + i])
        metrics["gathered"] = 1.0
        return scored[offset:offset + n]
