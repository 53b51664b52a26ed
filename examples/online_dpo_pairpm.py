"""Online DPO judged by RLHFlow's pair preference model: each prompt's two samples are compared directly
(both orders averaged), the more likely winner becomes "chosen". A win-rate callback tracks the policy
against the initial policy's greedy answers.

    python examples/online_dpo_pairpm.py           # Qwen2.5-0.5B-Instruct + RLHFlow/pair-preference-model-LLaMA3-8B
    python examples/online_dpo_pairpm.py --tiny    # tiny built-in models, CPU
"""

import argparse  # noqa: I001  (rmplugins before trl: it quiets TRL's warning on vLLM 0.32)

from rmplugins import RewardFunction
from rmplugins.trl import RewardBreakdownCallback, WinRateCallback
from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny built-in models on CPU (offline)")
    ap.add_argument("--policy", default="Qwen/Qwen2.5-0.5B-Instruct")
    ap.add_argument("--reward-model", default="RLHFlow/pair-preference-model-LLaMA3-8B")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--output-dir", default="outputs/online-dpo-pairpm")
    a = ap.parse_args()

    if a.tiny:
        from rmplugins.testing import tiny_checkpoint

        a.policy, a.reward_model = tiny_checkpoint("policy"), tiny_checkpoint("pair_pm")
        questions = ["What is a cat?", "Name a color.", "Say hello.", "Count to three."]
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in questions]})
    else:
        data = load_dataset("trl-lib/ultrafeedback-prompt", split="train")

    model = AutoModelForCausalLM.from_pretrained(a.policy, dtype="float32" if a.tiny else "bfloat16")
    tok = AutoTokenizer.from_pretrained(a.policy)
    judge = RewardFunction(a.reward_model, device="cpu" if a.tiny else None)  # detects the pair layout
    args = OnlineDPOConfig(
        output_dir=a.output_dir, per_device_train_batch_size=2 if a.tiny else 4,
        max_new_tokens=8 if a.tiny else 256, max_steps=a.max_steps or (2 if a.tiny else 500),
        logging_steps=1 if a.tiny else 10, learning_rate=5e-7, report_to="none", use_cpu=a.tiny,
        bf16=not a.tiny, save_strategy="no" if a.tiny else "steps")
    trainer = OnlineDPOTrainer(model=model, reward_funcs=judge, args=args, train_dataset=data, processing_class=tok)
    RewardBreakdownCallback(judge, trainer=trainer)
    win = WinRateCallback(judge, trainer, prompts=data["prompt"][:64], max_new_tokens=8 if a.tiny else 256,
                          every_n_steps=1 if a.tiny else 100)
    trainer.train()
    print("win rate vs. the initial policy:", win.results[-1])


if __name__ == "__main__":
    main()
