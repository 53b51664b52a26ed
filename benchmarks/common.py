"""Shared pieces of the benchmarks: benchmark-sized random checkpoints in the real on-disk layout, deterministic
synthetic RLHF data, timing, and FLOP/MFU arithmetic.

The tiny test checkpoints are too small for compute to dominate Python overhead, so the CPU benchmark builds a
Llama of a few hundred hidden units with the tiny Llama-3 tokenizer, saved exactly as the hub checkpoints are
(``LlamaForSequenceClassification`` for a Bradley-Terry RM, ``LlamaForCausalLM`` for the RLHFlow pair-PM), and
loads them through ``load_reward_model`` like any hub id.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from rmplugins.testing import WORDS, build_llama3_tokenizer

BENCH_SIZES = {  # name -> Llama shape
    "cpu": {"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 4},
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8},
}


def _llama_config(vocab: int, tokenizer_dir: Path, shape: dict, **extra):
    from tokenizers import Tokenizer
    from transformers import LlamaConfig

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|eot_id|>")
    return LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, initializer_range=0.02, bos_token_id=bos, eos_token_id=eos,
                       **shape, **extra)


def build_bench_checkpoint(kind: str, path: str | Path, size: str = "cpu", seed: int = 0) -> Path:
    """A random ``bt`` (LlamaForSequenceClassification), ``pair_pm`` (LlamaForCausalLM), ``gpm`` (the
    GPM-Llama-3.1 layout: LlamaForCausalLM tensors plus ``value_head [d, h]`` and ``prompt_head [d/2, h]``) or
    ``armorm`` (ArmoRM's: LlamaModel, 19 objectives, a 1024-wide gating MLP, the transform matrix) checkpoint in
    ``path`` (reused when already there)."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

    path = Path(path)
    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    vocab = build_llama3_tokenizer(path)
    torch.manual_seed(seed)
    if kind == "bt":
        cfg = _llama_config(vocab, path, BENCH_SIZES[size], num_labels=1)
        cfg.pad_token_id = cfg.eos_token_id
        model = LlamaForSequenceClassification(cfg)
        arch = "LlamaForSequenceClassification"
    elif kind == "armorm":
        cfg = _llama_config(vocab, path, BENCH_SIZES[size])
        model = LlamaModel(cfg)
        arch = "LlamaForRewardModelWithGating"
    elif kind in ("pair_pm", "gpm"):
        cfg = _llama_config(vocab, path, BENCH_SIZES[size])
        cfg.pad_token_id = cfg.eos_token_id
        model = LlamaForCausalLM(cfg)
        arch = "LlamaForCausalLM"
    else:
        raise ValueError(f"no benchmark checkpoint for kind {kind!r}")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if kind == "armorm":
        state = {f"model.{k}": v for k, v in state.items()}
        g = torch.Generator().manual_seed(seed + 1)
        h, dims = cfg.hidden_size, [cfg.hidden_size, 1024, 1024, 1024, 19]
        state["regression_layer.weight"] = torch.randn(19, h, generator=g) * h ** -0.5
        for i in range(4):
            state[f"gating.layers.{i}.weight"] = torch.randn(dims[i + 1], dims[i], generator=g) * dims[i] ** -0.5
            state[f"gating.layers.{i}.bias"] = torch.zeros(dims[i + 1])
        state["gating.logit_scale"] = torch.tensor([1.0])
        state["reward_transform_matrix"] = torch.eye(19) + torch.randn(19, 19, generator=g) * 0.1
    if kind == "gpm":
        g = torch.Generator().manual_seed(seed + 1)
        state["value_head.weight"] = torch.randn(4, cfg.hidden_size, generator=g) * cfg.hidden_size ** -0.5
        state["prompt_head.weight"] = torch.randn(2, cfg.hidden_size, generator=g) * cfg.hidden_size ** -0.5
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg_dict = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    cfg_dict.update(architectures=[arch], torch_dtype="float32")
    if kind == "bt":
        cfg_dict.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if kind == "armorm":
        cfg_dict.update(num_objectives=19, gating_temperature=10, gating_hidden_dim=1024, gating_n_hidden=3)
    (path / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True))
    if kind == "gpm":  # the GPM tokenizer pads on the left, as the published one
        tcfg = json.loads((path / "tokenizer_config.json").read_text())
        tcfg["padding_side"] = "left"
        (path / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))
    return path


# ----------------------------------------------------------------------------- data
def _words(rng: random.Random, n: int) -> str:
    out = []
    for k in range(n):
        w = rng.choice(WORDS)
        if k == 0 or out[-1].endswith("."):
            w = w.capitalize()
        if rng.random() < 0.08:
            w += rng.choice([".", ",", "?", ":"])
        out.append(w)
    return " ".join(out) + "."


def synthetic_groups(n_prompts: int = 8, n_candidates: int = 8, prompt_words=(250, 450),
                     candidate_words=(5, 200), seed: int = 0) -> list[tuple[str, list[str]]]:
    """Deterministic (prompt, candidates) groups: prompts of 250-450 words, candidates of 5-200 words."""
    rng = random.Random(seed)
    groups = []
    for _ in range(n_prompts):
        prompt = _words(rng, rng.randint(*prompt_words))
        groups.append((prompt, [_words(rng, rng.randint(*candidate_words)) for _ in range(n_candidates)]))
    return groups


# ----------------------------------------------------------------------------- timing and flops
def timed(fn, repeat: int = 1):
    """(best wall seconds over ``repeat`` runs, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def best_and_median(seconds: list[float]) -> str:
    """A path's interleaved rounds as a table cell: the best time and, in brackets, the median (the spread)."""
    return f"{min(seconds):.2f} (median {statistics.median(seconds):.2f})"


def matmul_params(config) -> int:
    """Parameters a token multiplies through in the backbone (no embedding table): the 2*params*tokens FLOPs."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim  # Qwen3-0.6B: q = 2 h
    return layers * (2 * h * q + 2 * h * kv + 3 * h * inter)


def floor_flops(config, seqs, last_layer_at_reads: bool = True) -> tuple[int, float]:
    """(the unique-token floor, its FLOPs): what a perfect plan computes for a reward read at each sequence's last
    token. Each node of the token trie (a distinct prefix: a shared prompt once, each continuation once) runs every
    layer's matmuls once and attends to itself and every token before it (its depth, counted exactly: a
    continuation over its whole prompt); with ``last_layer_at_reads`` (as the engine runs it), the last layer needs
    keys and values everywhere but queries, output projection and MLP only at the read positions (one per distinct
    sequence). A layer's matmul FLOPs use the attention's own width (heads x head_dim: Qwen3-0.6B's is twice its
    hidden size)."""
    from itertools import pairwise

    from rmplugins.engine.prefix import common_prefix_len

    unique = sorted({tuple(s) for s in seqs})
    shared = [0] + [common_prefix_len(a, b) for a, b in pairwise(unique)]
    floor = sum(len(s) - k for s, k in zip(unique, shared))
    pairs = sum(len(s) * (len(s) + 1) // 2 - k * (k + 1) // 2 for s, k in zip(unique, shared))
    h, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q_o, k_v = 2 * h * heads * head_dim, 2 * h * config.num_key_value_heads * head_dim
    mlp = 3 * h * config.intermediate_size
    if not last_layer_at_reads:
        return floor, 2.0 * layers * floor * (q_o + k_v + mlp) + 4.0 * layers * pairs * heads * head_dim
    reads = sum(len(s) for s in unique)  # each read query attends to its whole sequence
    matmuls = (layers - 1) * floor * (q_o + k_v + mlp) + floor * k_v + len(unique) * (q_o + mlp)
    return floor, 2.0 * matmuls + 4.0 * ((layers - 1) * pairs + reads) * heads * head_dim


def attention_flops(config, query_key_pairs: int) -> int:
    """QK^T and AV: 4 * heads * head_dim FLOPs per (query, visible key) pair and layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 4 * config.num_attention_heads * head_dim * config.num_hidden_layers * query_key_pairs


PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of the GPU (SXM figures; an H100 PCIe peaks at 756 TFLOP/s)."""
    if "H100" in device_name and "PCIe" in device_name:
        return 756e12
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def host_load() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load unknown"


# ----------------------------------------------------------------------------- driving a server
async def drive(url: str, payloads: list[dict], concurrency: int) -> dict:
    """``concurrency`` clients take the payloads in order (a prompt's samples go out together), one per request,
    each with a new aiohttp session (OpenRLHF's ``_fetch_rewards_via_http``)."""
    import aiohttp  # the server benchmarks' client only: common.py also runs where aiohttp is not installed

    timeout = aiohttp.ClientTimeout(total=600)
    latencies, rewards, failures = [], [None] * len(payloads), 0
    it = iter(enumerate(payloads))

    async def client():
        nonlocal failures
        for i, body in it:  # the shared iterator hands each payload to exactly one client
            t = time.perf_counter()
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url + "/get_reward", json=body) as r:
                    answer = await r.json()
                    if r.status == 200:
                        rewards[i] = answer["rewards"][0]
                    else:
                        failures += 1
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {"samples": len(latencies), "failures": failures, "seconds": wall, "sps": len(latencies) / wall,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "rewards": rewards}


def int_pairs(parser, option: str, values: list[str], form: str, example: str) -> list[tuple[int, int]]:
    """An option's values written AxB (both whole numbers of at least 1, e.g. ``--sizes 2x4``) as (A, B) pairs; a
    usage error naming ``form`` otherwise."""
    try:
        pairs = [tuple(int(x) for x in s.lower().split("x")) for s in values]
        if any(len(pair) != 2 or min(pair) < 1 for pair in pairs):
            raise ValueError
    except ValueError:
        parser.error(f"{option} takes {form} with both at least 1, e.g. {example} (got {' '.join(values)})")
    return pairs


def workload_sizes(parser, values: list[str]) -> list[tuple[int, int]]:
    """``--sizes`` given as PROMPTSxCANDIDATES as (prompts, candidates)."""
    return int_pairs(parser, "--sizes", values, "PROMPTSxCANDIDATES", "2x4")
