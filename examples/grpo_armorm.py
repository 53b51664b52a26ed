"""GRPO with ArmoRM as the reward: per-objective means in the logs, top objectives in the completions table.

    python examples/grpo_armorm.py                 # Qwen2.5-0.5B-Instruct + RLHFlow/ArmoRM-Llama3-8B-v0.1
    python examples/grpo_armorm.py --tiny          # tiny built-in models, CPU, a few seconds
    python examples/grpo_armorm.py --steer         # weight helpfulness and safety instead of ArmoRM's gate
"""

import argparse  # noqa: I001  (rmplugins before trl: it quiets TRL's warning on vLLM 0.32)

from rmplugins import RewardFunction
from rmplugins.trl import RewardBreakdownCallback
from datasets import Dataset, load_dataset
from trl import GRPOConfig, GRPOTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny built-in models on CPU (offline)")
    ap.add_argument("--policy", default="Qwen/Qwen2.5-0.5B-Instruct")
    ap.add_argument("--reward-model", default="RLHFlow/ArmoRM-Llama3-8B-v0.1")
    ap.add_argument("--steer", action="store_true", help="objective weights instead of the gating network")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--output-dir", default="outputs/grpo-armorm")
    a = ap.parse_args()

    if a.tiny:
        from rmplugins.testing import tiny_checkpoint

        a.policy, a.reward_model = tiny_checkpoint("policy"), tiny_checkpoint("armorm")
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in
                                             ["What is a cat?", "Name a color.", "Say hello.", "Count to three."]]})
    else:
        data = load_dataset("trl-lib/ultrafeedback-prompt", split="train")

    weights = {"helpsteer-helpfulness": 1.0, "beavertails-is_safe": 1.0} if a.steer else None
    reward = RewardFunction(a.reward_model, objective_weights=weights, device="cpu" if a.tiny else None)
    args = GRPOConfig(
        output_dir=a.output_dir, num_generations=4, per_device_train_batch_size=4,
        max_completion_length=8 if a.tiny else 256, max_steps=a.max_steps or (2 if a.tiny else 500),
        logging_steps=1 if a.tiny else 10, learning_rate=1e-6, beta=0.0, report_to="none", use_cpu=a.tiny,
        bf16=not a.tiny, save_strategy="no" if a.tiny else "steps",
        model_init_kwargs={"dtype": "float32"} if a.tiny else None)
    trainer = GRPOTrainer(model=a.policy, reward_funcs=reward, args=args, train_dataset=data)
    RewardBreakdownCallback(reward, trainer=trainer)
    trainer.train()
    last = {k: v for k, v in trainer.state.log_history[-2].items() if k.startswith(f"rewards/{reward.__name__}")}
    print({k: round(v, 4) for k, v in sorted(last.items())[:6]})


if __name__ == "__main__":
    main()
