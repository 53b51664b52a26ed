"""One training stage of a recipe: TRL's DPOTrainer on the pairs (iterative DPO) or SFTTrainer on the best of n
(rejection sampling), from the current policy into a new model directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .config import RecipeConfig


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- training
def train(cfg: RecipeConfig, rows: list[dict], policy: str, reference: str, out_dir: Path,
          conversational: bool) -> dict:
    """Train ``policy`` on ``rows`` with TRL's DPOTrainer (pairs) or SFTTrainer (best-of-n) into ``out_dir``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = _cuda() and (cfg.device is None or str(cfg.device).startswith("cuda"))
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=dtype)
    work = tempfile.mkdtemp(prefix="rmplugins-trainer-")
    common = {"output_dir": work, "learning_rate": cfg.lr, "num_train_epochs": cfg.epochs,
              "per_device_train_batch_size": cfg.batch_size,
              "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "max_length": cfg.max_length,
              "seed": cfg.seed, "data_seed": cfg.seed, "save_strategy": "no", "report_to": cfg.report_to,
              "use_cpu": not cuda, "bf16": dtype == torch.bfloat16, "logging_steps": 1,
              "disable_tqdm": not cfg.show_progress, "lr_scheduler_type": "linear", "warmup_steps": 0}
    try:
        if cfg.recipe == "iterative-dpo":
            from trl import DPOConfig, DPOTrainer

            data = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                                      for r in rows])
            ref = AutoModelForCausalLM.from_pretrained(reference, dtype=dtype)
            args = DPOConfig(beta=cfg.beta, label_smoothing=cfg.label_smoothing, **common)
            trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
        else:
            from trl import SFTConfig, SFTTrainer

            data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
            args = SFTConfig(**common)
            trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        if not cfg.show_progress:  # no per-step dict printing either
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        result = trainer.train()
        trainer.save_model(str(out_dir))
        tok.save_pretrained(str(out_dir))
        # training_args.bin pickles the trainer's scratch directory: drop it so the output is byte-reproducible
        (out_dir / "training_args.bin").unlink(missing_ok=True)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics = {"steps": int(result.global_step), "train_loss": float(result.training_loss),
                   "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                   "learning_rate": cfg.lr, "reference": reference if cfg.recipe == "iterative-dpo" else None}
        if cfg.recipe == "iterative-dpo":
            acc = [h["rewards/accuracies"] for h in trainer.state.log_history if "rewards/accuracies" in h]
            metrics["last_reward_accuracy"] = acc[-1] if acc else None
        del trainer, model
        return metrics
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cuda:
            torch.cuda.empty_cache()
