"""``make gpu-check``: the one prepared command for a session that is lent a GPU (an H100 or an H200 here, one
image: torch 2.11 and transformers 5.17, no TRL and no vLLM; TRL travels as wheels, ``make gpu-wheels``). It
prints one table, within about 8 minutes:

1. **bf16 parity**: every family's tiny checkpoint (built offline, real layout), and the 2026 backbones that are not
   plain attention stacks (Qwen3.5's gated delta rule, Gemma-3, Qwen3-MoE, GPT-OSS's sinks, a Gemma GPM, a Qwen3.5
   judge), scored on the GPU in bf16 against
   the same model in float32 there. It catches a family that fails or goes wrong in bf16 (an exception, a dtype
   mix-up, NaN, a reversed ranking, an error beyond bf16's accumulated rounding); exact parity with the reference
   code is the float32 suites' job. The bound is 0.1 of the score scale: the scores of these tiny random models are
   small differences of large terms, so bf16's rounding (2^-9 per operation) reaches 1-6 % of the scale on the
   CPU (GPM's GPO scores the most), where trained models stay near 1e-2.
2. **Engine throughput**: random-weight Bradley-Terry models of the Qwen3-0.6B and Llama-3-8B shapes, P prompts x n
   candidates of rollout lengths, through the engine (its attention and the model's own), tokens/s and MFU at the
   unique-token floor (its matmuls and attention, ``common.floor_flops``) against this GPU's measured bf16 matmul
   peak.
3. **Co-located GRPO step**: a Qwen3-shaped policy and reward model on one GPU, the reward model offloaded to the
   CPU between phases (``CoLocationCallback``), the peak memory of each phase (skipped, and said so, without TRL).

``--dry-run``: the same code on the CPU with tiny shapes, in seconds; ``make test`` runs it, so the script cannot
rot before the day a GPU is there. ``--json PATH`` also writes the rows.

    make gpu-check                                   # on the GPU machine
    make gpu-check GPU_CHECK_ARGS=--dry-run          # anywhere
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

BF16_BOUND = 0.1  # of the score scale; see the module docstring (bf16 rounding measured at 1-6 % on these models)
FAMILIES = [("bt", {}), ("bt_llama3", {}), ("bt_qwen3", {}), ("bt_qwen25", {}), ("bt_gemma2", {}),
            ("armorm", {}), ("pair_pm", {}), ("pairrm", {}), ("gpm", {}), ("prm", {}),
            ("genrm_qwen3", {"kind": "genrm", "judge": "qwen3-reranker"}),
            ("genrm_trained", {"kind": "genrm", "judge": "mt-bench-logits"}),
            # the 2026 backbones that are not plain attention stacks (rmplugins.testing.backbones)
            ("bt_qwen35", {}), ("bt_gemma3", {}), ("bt_qwen3_moe", {}), ("bt_gpt_oss", {}), ("gpm_gemma", {}),
            ("genrm_qwen35", {"kind": "genrm", "judge": "qwen3-reranker"})]
SHAPES = {  # (model_type, shape); --dry-run shrinks them
    "Qwen3-0.6B": ("qwen3", {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                             "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128}),
    "Llama-3-8B": ("llama", {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                             "num_attention_heads": 32, "num_key_value_heads": 8}),
}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


def rows_of_parity(device: str, root: str) -> list[dict]:
    from rmplugins import load_reward_model
    from rmplugins.testing import tiny_checkpoint

    prompts = [[{"role": "user", "content": "Name a color and say why."}],
               [{"role": "user", "content": "What is 12 times 3? Answer briefly."}]]
    answers = [["Blue, because the sky is blue.", "Red.", "Green, like grass in spring."],
               ["36.", "12 times 3 is 36.\n\nSo the answer is 36.", "I think it is 38."]]
    groups = [len(a) for a in answers]
    rows = []
    for kind, options in FAMILIES:
        start = time.perf_counter()
        try:
            path = tiny_checkpoint(kind, root)
            out = {}
            for dtype in ("float32", "bfloat16"):
                rm = load_reward_model(path, device=device, dtype=dtype, **options)
                if device == "cpu" and rm.engine is not None:  # --dry-run: the engine's fused CPU kernels are
                    rm.engine.fused_kernels = False  # a path no GPU takes (test_ragged_fused compiles them)
                if rm.pointwise:
                    values = rm.score([p for p, a in zip(prompts, answers) for _ in a], [x for a in answers for x in a])
                else:
                    values = [s for r in rm.rank_many(prompts, answers) for s in r.scores]
                out[dtype] = torch.tensor([float("nan") if v is None else v for v in values])
                del rm
            diff = (out["bfloat16"] - out["float32"]).abs()
            worst = float(diff.max())
            scale = float(out["float32"].abs().max()) or 1.0
            reversed_pairs = reversals(out["float32"], out["bfloat16"], groups, BF16_BOUND * max(1.0, scale))
            ok = worst <= BF16_BOUND * max(1.0, scale) and not reversed_pairs
            value = f"max |bf16-fp32| {worst:.1e} (scale {scale:.2f})"
            if reversed_pairs:
                value += f", {reversed_pairs} pair(s) ranked the other way"
            rows.append({"check": f"bf16 parity {kind}", "value": value,
                         "ok": ok, "seconds": time.perf_counter() - start})
        except Exception as err:  # noqa: BLE001 - one family failing must not hide the others' rows
            rows.append({"check": f"bf16 parity {kind}", "value": f"{type(err).__name__}: {err}"[:200], "ok": False,
                         "seconds": time.perf_counter() - start})
    return rows


def reversals(reference: torch.Tensor, other: torch.Tensor, groups: list[int], margin: float) -> int:
    """Pairs of one prompt's candidates, apart by more than ``margin`` in ``reference``, that ``other`` orders the
    other way (a NaN counts as a reversal)."""
    count, start = 0, 0
    for n in groups:
        for i in range(start, start + n):
            for j in range(i + 1, start + n):
                gap = float(reference[i] - reference[j])
                if abs(gap) > margin and not float(other[i] - other[j]) * gap > 0:
                    count += 1
        start += n
    return count


def matmul_peak(device: str, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(3):
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < 0.5:
            a @ b
            count += 1
        sync(device)
        best = max(best, 2 * n ** 3 * count / (time.perf_counter() - start))
    return best


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_backbone(model_type: str, shape: dict, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, vocab_size=32000, max_position_embeddings=16384, **shape)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype)
    return model.eval()


def rows_of_throughput(device: str, dry: bool, peak: float) -> list[dict]:
    import random

    from common import floor_flops

    from rmplugins.engine import ScoringEngine

    rows = []
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    prompts, n, prompt_len, answer_len = (2, 4, 48, 16) if dry else (32, 8, 1024, (64, 512))
    rng = random.Random(0)
    seqs = []
    for _ in range(prompts):
        head = [rng.randrange(10, 32000) for _ in range(prompt_len)]
        for _ in range(n):
            length = answer_len if dry else rng.randint(*answer_len)
            seqs.append(head + [rng.randrange(10, 32000) for _ in range(length)])
    for name, (model_type, shape) in SHAPES.items():
        start = time.perf_counter()
        try:
            backbone = random_backbone(model_type, TINY if dry else shape, device, dtype)
            floor, flops = floor_flops(backbone.config, seqs)  # the matmuls and the attention a perfect plan needs
            for attention in (True, False):
                engine = ScoringEngine(backbone, 0, engine_attention=attention)
                positions = [[-1] for _ in seqs]
                engine.hidden_at(seqs[:n], positions[:n])  # warm-up
                sync(device)
                best = float("inf")
                for _ in range(2 if dry else 3):
                    t = time.perf_counter()
                    engine.hidden_at(seqs, positions)
                    sync(device)
                    best = min(best, time.perf_counter() - t)
                mfu = flops / best / peak
                rows.append({"check": f"engine {name} ({'engine' if attention else 'model'} attention)",
                             "value": f"{floor / best:,.0f} floor tokens/s, MFU {mfu:.2f} ({floor} tokens in "
                                      f"{best:.2f} s)", "ok": True, "seconds": time.perf_counter() - start})
            del backbone
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001
            rows.append({"check": f"engine {name}", "value": f"{type(err).__name__}: {err}"[:200], "ok": False,
                         "seconds": time.perf_counter() - start})
    return rows


def rows_of_colocation(device: str, dry: bool, root: str) -> list[dict]:
    start = time.perf_counter()
    try:
        import trl
    except ImportError as err:
        if err.name != "trl":  # TRL is there, something it needs is not
            return [{"check": "co-located GRPO step", "value": f"TRL cannot be imported ({err}): carry the wheels "
                     "of `make gpu-wheels` (docs/development.md)", "ok": False, "seconds": 0.0}]
        return [{"check": "co-located GRPO step", "value": "skipped: TRL is not installed (bring it as a wheel: "
                 "`make gpu-wheels`, docs/development.md)", "ok": True, "seconds": 0.0}]
    origin = f"TRL {trl.__version__} from {Path(trl.__file__).parent.parent}"
    try:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from rmplugins import RewardFunction
        from rmplugins.testing import tiny_checkpoint
        from rmplugins.trl import CoLocationCallback

        policy_path = tiny_checkpoint("policy", root)
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(policy_path)
        reward = RewardFunction(tiny_checkpoint("bt_qwen3", root), device=device)
        callback = CoLocationCallback([reward], device=device)
        peaks: dict[str, float] = {}

        class Phases(TrainerCallback):  # the peak memory of the whole step (generation and training)
            def on_step_begin(self, args, state, control, **kw):
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()

            def on_step_end(self, args, state, control, **kw):
                if device.startswith("cuda"):
                    peaks["step"] = torch.cuda.max_memory_allocated() / 2 ** 30

        def measured_reward(*a, **kw):
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            out = reward(*a, **kw)
            if device.startswith("cuda"):
                peaks["reward"] = torch.cuda.max_memory_allocated() / 2 ** 30
            return out

        measured_reward.__name__ = reward.__name__
        gpu = device.startswith("cuda")
        args = GRPOConfig(output_dir=tempfile.mkdtemp(), max_steps=1, logging_steps=1, report_to="none",
                          use_cpu=not gpu, bf16=gpu, save_strategy="no", per_device_train_batch_size=4,
                          num_generations=2, max_completion_length=8, beta=0.0, disable_tqdm=True)
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": "Say hello."}]] * 4})
        trainer = GRPOTrainer(model=policy, reward_funcs=[measured_reward], args=args, train_dataset=data,
                              processing_class=tok, callbacks=[callback, Phases()])
        trainer.train()
        where = [event for event, _, _ in callback.history]
        memory = ", ".join(f"{k} peak {v:.2f} GiB" for k, v in peaks.items()) or "CPU: no device memory to report"
        return [{"check": "co-located GRPO step", "value": f"{memory}; reward model moves: {where}; {origin}",
                 "ok": "offload" in where, "seconds": time.perf_counter() - start}]
    except Exception as err:  # noqa: BLE001
        return [{"check": "co-located GRPO step", "value": f"{type(err).__name__}: {err}"[:200] + f" ({origin})",
                 "ok": False, "seconds": time.perf_counter() - start}]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the CPU, tiny shapes: checks the script, in seconds")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--skip", nargs="*", default=[], choices=["parity", "throughput", "colocation"],
                   help="sections to leave out")
    args = p.parse_args(argv)
    if args.dry_run:
        device = "cpu"
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on the GPU machine, or with --dry-run to check the script",
              file=sys.stderr)
        return 2
    else:
        device = "cuda"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = os.environ.get("RMPLUGINS_TINY_DIR") or os.path.join(tempfile.gettempdir(), "rmplugins-gpu-check")
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype, 256 if args.dry_run else 8192)
    started = time.perf_counter()
    rows = [{"check": "matmul peak", "value": f"{peak / 1e12:.1f} TFLOP/s ({str(peak_dtype).split('.')[1]})",
             "ok": True, "seconds": 0.0}]
    if "parity" not in args.skip:
        rows += rows_of_parity(device, root)
    if "throughput" not in args.skip:
        rows += rows_of_throughput(device, args.dry_run, peak)
    if "colocation" not in args.skip:
        rows += rows_of_colocation(device, args.dry_run, root)
    print(f"# gpu_check {datetime.datetime.now():%Y-%m-%d %H:%M} · {name} · torch {torch.__version__} · "
          f"{time.perf_counter() - started:.0f} s")
    print("| check | result | ok | s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['check']} | {row['value']} | {'yes' if row['ok'] else 'NO'} | {row['seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
