"""GRPO with GPM's group reward (GPO): each completion's score is its mean preference over the other
completions of its prompt, (1/n) sum_j (s_ij - s_ji) / tau, from one forward pass per completion.

    python examples/grpo_gpm_gpo.py         # Qwen2.5-0.5B-Instruct + general-preference/GPM-Llama-3.1-8B
    python examples/grpo_gpm_gpo.py --tiny         # tiny built-in models, CPU
"""

import argparse  # noqa: I001  (rmplugins before trl: it quiets TRL's warning on vLLM 0.32)

from rmplugins import RewardFunction
from datasets import Dataset, load_dataset
from trl import GRPOConfig, GRPOTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny built-in models on CPU (offline)")
    ap.add_argument("--policy", default="Qwen/Qwen2.5-0.5B-Instruct")
    ap.add_argument("--reward-model", default="general-preference/GPM-Llama-3.1-8B")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--output-dir", default="outputs/grpo-gpm-gpo")
    a = ap.parse_args()

    if a.tiny:
        from rmplugins.testing import tiny_checkpoint

        a.policy, a.reward_model = tiny_checkpoint("policy"), tiny_checkpoint("gpm")
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in
                                             ["What is a cat?", "Name a color.", "Say hello.", "Count to three."]]})
    else:
        data = load_dataset("trl-lib/ultrafeedback-prompt", split="train")

    g = a.num_generations
    # num_generations tells the reward function where each prompt's group starts; the local generation batch
    # (per_device_train_batch_size * steps_per_generation) a multiple of g keeps groups inside one process.
    reward = RewardFunction(a.reward_model, num_generations=g, device="cpu" if a.tiny else None)
    args = GRPOConfig(
        output_dir=a.output_dir, num_generations=g, per_device_train_batch_size=g,
        max_completion_length=8 if a.tiny else 512, max_steps=a.max_steps or (2 if a.tiny else 500),
        logging_steps=1 if a.tiny else 10, learning_rate=1e-6, beta=0.0, temperature=0.7, top_p=0.9,
        report_to="none", use_cpu=a.tiny, bf16=not a.tiny, save_strategy="no" if a.tiny else "steps",
        model_init_kwargs={"dtype": "float32"} if a.tiny else None)
    trainer = GRPOTrainer(model=a.policy, reward_funcs=reward, args=args, train_dataset=data)
    trainer.train()
    print({k: v for k, v in trainer.state.log_history[-2].items() if k.startswith("rewards/")})


if __name__ == "__main__":
    main()
