"""The options of a recipe run, validated when built (before any work), and the subset that fingerprints a run
for resume."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

RECIPES = ("iterative-dpo", "rejection-sampling")
# Options that do not change any output file: they may differ between a run and its resume.
_RESUME_FREE = {"iterations", "output", "show_progress", "rm_device", "device", "gpu_memory_utilization",
                "eval_final", "report_to"}


@dataclass
class RecipeConfig:
    recipe: str
    policy: str
    reward_model: str
    prompts: str
    output: str
    iterations: int = 2
    num_candidates: int = 4
    max_new_tokens: int = 256
    backend: str = "hf"
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 42
    pair_rule: str | None = None          # None: by reward-model kind (max-min / tournament / gpo)
    min_margin: float = 0.0
    reference: str = "initial"            # DPO reference: "initial" policy (RLHFlow) or "previous" iteration
    learning_rate: float | None = None    # None: 5e-7 for DPO (RLHFlow), 1e-5 for SFT
    epochs: float = 2.0
    beta: float = 0.1
    label_smoothing: float = 0.1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 2048
    openrlhf_keys: bool = False
    eval_final: bool = False
    reward_kwargs: dict = field(default_factory=dict)
    rm_device: str | None = None
    device: str | None = None
    gpu_memory_utilization: float = 0.5
    chunk_size: int = 64                  # prompts per generation/scoring chunk (the unit of saved progress)
    generation_batch_size: int = 8        # prompts per transformers generate call (hf backend)
    vllm_engine_args: dict = field(default_factory=dict)  # extra keyword arguments of vllm.LLM (vllm backend)
    show_progress: bool = True
    report_to: str = "none"               # TRL/transformers trackers: "none", "wandb", "tensorboard", "all", ...

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {list(RECIPES)}")
        whole = {"iterations": self.iterations, "num_candidates": self.num_candidates,
                 "max_new_tokens": self.max_new_tokens, "chunk_size": self.chunk_size,
                 "generation_batch_size": self.generation_batch_size, "batch_size": self.batch_size,
                 "gradient_accumulation_steps": self.gradient_accumulation_steps, "max_length": self.max_length}
        for name, value in whole.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")
        ranges = [("temperature", self.temperature, 0, None, "above 0 (sampling K different candidates; 0 would "
                   "repeat one)"), ("top_p", self.top_p, 0, 1, "in (0, 1]"), ("epochs", self.epochs, 0, None,
                   "above 0"), ("beta", self.beta, 0, None, "above 0"),
                  ("gpu_memory_utilization", self.gpu_memory_utilization, 0, 1, "in (0, 1]")]
        if self.learning_rate is not None:
            ranges.append(("learning_rate", self.learning_rate, 0, None, "above 0"))
        for name, value, low, high, what in ranges:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low
                    and (high is None or value <= high)):
                raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing!r}")
        if not (math.isfinite(self.min_margin) and self.min_margin >= 0):
            raise ValueError(f"--min-margin must be 0 or more, got {self.min_margin!r}")
        if self.recipe == "iterative-dpo" and self.num_candidates < 2:
            raise ValueError("iterative DPO needs --num-candidates of at least 2 to form a pair")
        if self.recipe == "rejection-sampling" and self.num_candidates < 2:  # the best of one rejects nothing
            raise ValueError("rejection sampling keeps the best of --num-candidates; with 1 it would keep every "
                             "sample unjudged: use 2 or more")
        if self.reference not in ("initial", "previous"):
            raise ValueError(f"--reference must be 'initial' or 'previous', got {self.reference!r}")
        for name in ("policy", "reward_model"):
            value = str(getattr(self, name))
            if value.startswith(("/", "./", "../", "~")) and not os.path.isdir(os.path.expanduser(value)):
                raise ValueError(f"--{name.replace('_', '-')} {value!r} is not a directory; give a local model "
                                 "directory or a hub id such as 'RLHFlow/LLaMA3-SFT'")
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"--backend must be 'hf' or 'vllm', got {self.backend!r}")
        if self.vllm_engine_args:
            if self.backend != "vllm":
                raise ValueError("--vllm-engine-args is an option of --backend vllm")
            if not isinstance(self.vllm_engine_args, dict) or not all(isinstance(k, str)
                                                                      for k in self.vllm_engine_args):
                raise ValueError("--vllm-engine-args must be a JSON object of vllm.LLM keyword arguments, such as "
                                 '\'{"enforce_eager": true, "max_model_len": 4096}\'')
            if "model" in self.vllm_engine_args:
                raise ValueError("--vllm-engine-args cannot set 'model': the policy is --policy, then each "
                                 "iteration's trained model")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-7 if self.recipe == "iterative-dpo" else 1e-5

    def fingerprint(self) -> dict:
        """The options that shape the outputs: stored in ``DIR/run.json``, a resume must match them."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in _RESUME_FREE}
        for key in ("policy", "reward_model", "prompts"):
            out[key] = os.path.abspath(out[key]) if os.path.exists(out[key]) else out[key]
        return out
