"""Trainer callbacks TRL no longer ships or never had: win rate judged by a reward model, reward-model
co-location (park it on the CPU while the policy trains and vLLM generates), and a reward breakdown logger."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from ..loading import load_reward_model
from ..options import whole_number
from .reward_function import RewardFunction
from .shaping import _BaseRewardFunction

logger = logging.getLogger("rmplugins.trl")


def _as_list(funcs: Any) -> list:
    return list(funcs) if isinstance(funcs, (list, tuple)) else [funcs]


def _put_first(trainer: Any, callback: TrainerCallback) -> None:
    """Run before the reporting callbacks (wandb, tensorboard...), so the values we add to ``logs`` reach them."""
    handler = getattr(trainer, "callback_handler", None)
    if handler is None:
        return
    if callback in handler.callbacks:
        handler.callbacks.remove(callback)
    handler.callbacks.insert(0, callback)


def _add_to_logs(state: Any, logs: dict | None, values: dict[str, float]) -> None:
    if not values or logs is None:
        return
    logs.update(values)
    # Trainer.log appended a copy of ``logs`` to the history before calling on_log: keep both in step.
    if state.log_history and state.log_history[-1].get("step") == state.global_step:
        state.log_history[-1].update(values)


class RewardBreakdownCallback(TrainerCallback):
    """Adds each rmplugins reward function's breakdown (raw mean before shaping, length penalty, running
    normalisation statistics, clipped fraction, comparisons, rows without a reward, ArmoRM per-objective means)
    to every log as ``breakdown/<name>/<metric>``. Online DPO has no ``log_metric``, so this is how those values
    reach its logs; ``path`` also writes one JSON line per log (main process)."""

    def __init__(self, reward_funcs: Any, trainer: Any = None, path: str | os.PathLike | None = None):
        self.reward_funcs = [f for f in _as_list(reward_funcs) if isinstance(f, _BaseRewardFunction)]
        if not self.reward_funcs:
            raise ValueError("RewardBreakdownCallback needs rmplugins reward functions (RewardFunction, "
                             "AsyncRemoteRewardFunction)")
        self.path = str(path) if path else None
        if trainer is not None:
            _put_first(trainer, self)

    def on_log(self, args, state, control, logs=None, **kwargs):
        values: dict[str, float] = {}
        for f in self.reward_funcs:
            values.update({f"breakdown/{k}": v for k, v in f.pop_breakdown().items()})
        _add_to_logs(state, logs, values)
        if self.path and values and state.is_world_process_zero:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"step": state.global_step, **values}) + "\n")
        return control


class CoLocationCallback(TrainerCallback):
    """Keeps reward models off the accelerator except while they score.

    When training starts the reward models move to ``offload_device`` (CPU); each call of a
    :class:`RewardFunction` moves its model to ``device`` (default: the trainer's device), scores, and moves it
    back, emptying the CUDA cache, so the policy's optimizer step and vLLM's generation get the memory.
    """

    def __init__(self, reward_funcs: Any, device: str | torch.device | None = None,
                 offload_device: str | torch.device = "cpu"):
        self.reward_funcs = [f for f in _as_list(reward_funcs) if isinstance(f, RewardFunction)]
        if not self.reward_funcs:
            raise ValueError("CoLocationCallback needs rmplugins.RewardFunction instances (in-process models)")
        self.device = torch.device(device) if device is not None else None
        self.offload_device = torch.device(offload_device)
        self.history: list[tuple[str, str, str]] = []  # (event, reward function name, device)
        for f in self.reward_funcs:
            f._placement = self

    def _move(self, f: RewardFunction, device: torch.device, event: str) -> None:
        f.model.to(device)
        if event == "offload" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.history.append((event, f.__name__, str(f.model.device)))
        del self.history[:-200]

    def acquire(self, f: RewardFunction) -> None:
        if self.device is not None:
            self._move(f, self.device, "acquire")

    def release(self, f: RewardFunction) -> None:
        if self.device is not None:
            self._move(f, self.offload_device, "offload")

    def on_train_begin(self, args, state, control, **kwargs):
        if self.device is None:
            self.device = torch.device(args.device)
        for f in self.reward_funcs:
            self._move(f, self.offload_device, "offload")
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for f in self.reward_funcs:  # leave the models where they score, as before training
            self._move(f, self.device, "restore")
            f._placement = None
        return control


def win_metrics(probs: Sequence[float | None]) -> dict[str, float]:
    """``win_rate`` (share won, ties half) and ``win_prob`` (mean P(policy beats reference)) over the prompts the
    judge decided; a generating judge's no-verdict (None) is left out, counted in ``win_no_verdict`` and warned
    about, never read as a loss or a tie (NaN for both when nothing was decided)."""
    judged = [p for p in probs if p is not None]
    missing = len(probs) - len(judged)
    if missing:
        logger.warning("WinRateCallback: the judge gave no verdict for %d of %d prompts; the win rate is over the "
                       "%d it decided", missing, len(probs), len(judged))
    if not judged:
        return {"win_rate": math.nan, "win_prob": math.nan, "win_no_verdict": float(missing)}
    wins = [1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in judged]
    metrics = {"win_rate": sum(wins) / len(wins), "win_prob": sum(judged) / len(judged)}
    return {**metrics, "win_no_verdict": float(missing)} if missing else metrics


class WinRateCallback(TrainerCallback):
    """Win rate of the policy against reference completions, judged by an rmplugins model (TRL removed its
    ``WinRateCallback`` and judges).

    ``judge`` is a reward model, a :class:`RewardFunction` or a path. Reference completions are given, or
    generated by the policy when training starts (the initial policy as the baseline, as TRL's callback did).
    At every evaluation and every ``every_n_steps`` optimizer steps the policy completes ``prompts`` greedily;
    the judge gives P(policy ≻ reference) per prompt; the log gets ``win_rate`` (share of prompts won, ties
    half) and ``win_prob`` (mean probability), prefixed ``eval_`` after an evaluation.
    """

    def __init__(self, judge: Any, trainer: Any, prompts: Sequence[Any] | None = None,
                 reference_completions: Sequence[Any] | None = None, *, max_new_tokens: int = 64,
                 every_n_steps: int | None = None, batch_size: int = 8, num_prompts: int | None = None):
        # whole numbers, checked before a judge loads: batch_size=0 was run as 1, num_prompts=0 as every prompt
        max_new_tokens, batch_size = whole_number("max_new_tokens", max_new_tokens, 1), whole_number(
            "batch_size", batch_size, 1)
        if every_n_steps is not None:
            every_n_steps = whole_number("every_n_steps", every_n_steps, 1, " (or None: at evaluations only)")
        if num_prompts is not None:
            num_prompts = whole_number("num_prompts", num_prompts, 1, " (or None: every prompt)")
        if isinstance(judge, RewardFunction):
            judge = judge.model
        elif isinstance(judge, (str, os.PathLike)):
            judge = load_reward_model(str(judge))
        if not hasattr(judge, "compare"):
            raise TypeError(f"judge must be an rmplugins reward model, RewardFunction or path, got {type(judge)!r}")
        self.judge = judge
        self.trainer = trainer
        if prompts is None:
            dataset = getattr(trainer, "eval_dataset", None) or getattr(trainer, "train_dataset", None)
            if dataset is None or "prompt" not in dataset.column_names:
                raise ValueError("WinRateCallback needs prompts=, or a trainer dataset with a 'prompt' column")
            prompts = dataset["prompt"]
        prompts = list(prompts)[:num_prompts] if num_prompts is not None else list(prompts)
        if not prompts:
            raise ValueError("WinRateCallback needs at least one prompt")
        if reference_completions is not None and len(reference_completions) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(reference_completions)} reference completions")
        self.prompts = prompts
        self.reference = list(reference_completions) if reference_completions is not None else None
        self.max_new_tokens = max_new_tokens
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.results: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}
        self.last_completions: list[Any] = []
        _put_first(trainer, self)

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def _generate(self) -> list[Any]:
        trainer = self.trainer
        accelerator = trainer.accelerator
        model = accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap a tokenizer
        conversational = not isinstance(self.prompts[0], str)
        was_training = model.training
        model.eval()
        indices = list(range(len(self.prompts)))
        local: list[tuple[int, str]] = []
        with accelerator.split_between_processes(indices) as mine:
            for s in range(0, len(mine), self.batch_size):
                chunk = mine[s:s + self.batch_size]
                if conversational:
                    texts = [tokenizer.apply_chat_template(list(self.prompts[i]), tokenize=False,
                                                           add_generation_prompt=True) for i in chunk]
                    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                                    add_special_tokens=False)
                else:
                    enc = tokenizer([self.prompts[i] for i in chunk], return_tensors="pt", padding=True,
                                    padding_side="left")
                enc = {k: v.to(model.device) for k, v in enc.items()}
                out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
                decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                local.extend(zip(chunk, decoded))
        if model.training != was_training:
            model.train(was_training)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            local = gather_object(local)
        texts = [t for _, t in sorted(local)]
        if conversational:
            return [[{"role": "assistant", "content": t}] for t in texts]
        return texts

    def _judge(self) -> dict[str, float]:
        completions = self._generate()
        self.last_completions = completions
        return win_metrics(self.judge.compare(self.prompts, completions, self.reference))

    # -------------------------------------------------------------- hooks
    def on_train_begin(self, args, state, control, **kwargs):
        if self.reference is None:
            self.reference = self._generate()
            logger.info("WinRateCallback: generated %d reference completions with the initial policy",
                        len(self.reference))
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            metrics = self._judge()
            self.results.append({"step": state.global_step, **metrics})
            self._pending = metrics
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None and not any(k.startswith("eval_") for k in logs):
            _add_to_logs(state, logs, self._pending)
            self._pending = {}
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        values = {f"eval_{k}": v for k, v in self._judge().items()}
        self.results.append({"step": state.global_step, **values})
        if metrics is not None:
            metrics.update(values)
        self.trainer.log(values)
        return control
