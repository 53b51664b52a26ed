"""Rejection-sampling fine-tuning (best of n, then SFT) with an open reward model, on one GPU.

    python examples/rejection_sampling.py --tiny            # built-in tiny models, CPU, offline, about a minute
    pip install 'rmplugins[vllm]'
    python examples/rejection_sampling.py --prompts prompts.jsonl --output runs/rs

Defaults: the SFT policy RLHFlow/LLaMA3-SFT, the reward model RLHFlow/ArmoRM-Llama3-8B-v0.1 (its gated
score), 8 samples per prompt with vLLM, the best of 8 kept per prompt (DIR/iter-k/best.jsonl: prompt, completion,
score) and fine-tuned with TRL's SFTTrainer (lr 1e-5, 2 epochs, loss on the completion only), 3 iterations.
Re-running the same command resumes where it stopped.
"""

import argparse
import logging

from rmplugins.recipes import RecipeConfig, run_recipe
from rmplugins.recipes.cli import format_table
from rmplugins.recipes.demo_loop import tiny_recipe_options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="RLHFlow/LLaMA3-SFT")
    p.add_argument("--reward-model", default="RLHFlow/ArmoRM-Llama3-8B-v0.1")
    p.add_argument("--tiny", action="store_true",
                   help="the demo's tiny policy and reward model, its prompts, the hf backend, on CPU (offline)")
    p.add_argument("--prompts", help="JSON lines with a 'prompt' field (required without --tiny)")
    p.add_argument("--output", default="runs/rejection-sampling")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--num-candidates", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--backend", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--openrlhf-keys", action="store_true", help="also write OpenRLHF's input/output/reward rows")
    args = p.parse_args()
    tiny = tiny_recipe_options(args.output) if args.tiny else {}  # the demo's models, CPU-sized
    if not args.tiny and not args.prompts:
        p.error("--prompts FILE is required (or --tiny for the built-in tiny models)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = dict(
        recipe="rejection-sampling", policy=args.policy, reward_model=args.reward_model, prompts=args.prompts,
        output=args.output, iterations=args.iterations, num_candidates=args.num_candidates,
        max_new_tokens=args.max_new_tokens, backend=args.backend, temperature=1.0, seed=42, learning_rate=1e-5,
        epochs=2, batch_size=1, gradient_accumulation_steps=16, max_length=2048, gpu_memory_utilization=0.5,
        openrlhf_keys=args.openrlhf_keys, eval_final=True)
    options.update(tiny)
    summary = run_recipe(RecipeConfig(**options))
    print(format_table(summary))


if __name__ == "__main__":
    main()
