"""Iterative DPO with an open reward model (RLHFlow's online recipe), on one GPU.

    python examples/iterative_dpo.py --tiny            # built-in tiny models, CPU, offline, about a minute
    pip install 'rmplugins[vllm]'
    python examples/iterative_dpo.py --prompts prompts.jsonl --output runs/iter-dpo

Defaults follow RLHFlow Online-RLHF: the SFT policy RLHFlow/LLaMA3-SFT, the Bradley-Terry reward model
sfairXC/FsfairX-LLaMA3-RM-v0.1, 8 samples per prompt with vLLM (temperature 1.0, seed 42), chosen = best and
rejected = worst (exact ties dropped), DPO with lr 5e-7, 2 epochs, label smoothing 0.1, the initial policy as
reference, 3 iterations. Any reward family works: a pairwise model (RLHFlow/pair-preference-model-LLaMA3-8B,
llm-blender/PairRM-hf) picks chosen/rejected by tournament, GPM (general-preference/GPM-Llama-3.1-8B) by GPO score.

The prompt file is JSON lines with a "prompt" field (a string or a list of chat messages). Re-running the same
command resumes where it stopped. The equivalent command line is printed at start.
"""

import argparse
import logging

from rmplugins.recipes import RecipeConfig, run_recipe
from rmplugins.recipes.cli import format_table
from rmplugins.recipes.demo_loop import tiny_recipe_options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="RLHFlow/LLaMA3-SFT")
    p.add_argument("--reward-model", default="sfairXC/FsfairX-LLaMA3-RM-v0.1")
    p.add_argument("--tiny", action="store_true",
                   help="the demo's tiny policy and reward model, its prompts, the hf backend, on CPU (offline)")
    p.add_argument("--prompts", help="JSON lines with a 'prompt' field (required without --tiny)")
    p.add_argument("--output", default="runs/iterative-dpo")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--num-candidates", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--backend", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--gradient-accumulation-steps", type=int, default=16)
    args = p.parse_args()
    tiny = tiny_recipe_options(args.output) if args.tiny else {}  # the demo's models, CPU-sized
    if not args.tiny and not args.prompts:
        p.error("--prompts FILE is required (or --tiny for the built-in tiny models)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.tiny:
        print(f"equivalent: rmplugins iterative-dpo --policy {args.policy} --reward-model {args.reward_model} "
              f"--prompts {args.prompts} --output {args.output} --iterations {args.iterations} "
              f"--num-candidates {args.num_candidates} --max-new-tokens {args.max_new_tokens} "
              f"--backend {args.backend} --batch-size {args.batch_size} "
              f"--gradient-accumulation-steps {args.gradient_accumulation_steps}")
    options = dict(
        recipe="iterative-dpo", policy=args.policy, reward_model=args.reward_model, prompts=args.prompts,
        output=args.output, iterations=args.iterations, num_candidates=args.num_candidates,
        max_new_tokens=args.max_new_tokens, backend=args.backend, temperature=1.0, seed=42,
        learning_rate=5e-7, epochs=2, label_smoothing=0.1, beta=0.1, reference="initial",
        batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_length=2048, gpu_memory_utilization=0.5, eval_final=True)
    options.update(tiny)
    summary = run_recipe(RecipeConfig(**options))
    print(format_table(summary))


if __name__ == "__main__":
    main()
