"""The engine attention (rmplugins.engine.attention): its pieces against softmax attention written out, and the engine's
hidden states with it against the backbone run on each sequence alone, for every causal family's layout."""

import random

import pytest
import torch

from rmplugins.engine import ScoringEngine
from rmplugins.engine.attention import attention_with_lse, merge, padded_keys, supports_engine_attention

TOL = 2e-5
# Mistral, Llama-3, Llama-3.2 (RoPE scaling), Qwen2 (the PRM too), Qwen3 (q/k norms) backbones
CAUSAL_KINDS = ["bt", "bt_llama3", "armorm", "pair_pm", "gpm", "bt_llama32", "bt_qwen25", "bt_qwen3", "bt_qwen3_moe",
                "prm"]


def softmax_attention(q, k, v, scale, causal=False):
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_lse_is_softmax_attention(fused, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7 if causal else 5, 16, generator=g) for _ in range(3))
    if causal:
        k, v = k[:, :, :7], v[:, :, :7]
    out, lse = attention_with_lse(q, k, v, causal=causal, scale=0.3, fused=fused)
    ref_out, ref_lse = softmax_attention(q, k, v, 0.3, causal)
    assert (out - ref_out).abs().max() < 1e-5 and (lse - ref_lse).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_keys_past_key_count_are_never_attended(fused, causal, dtype):
    """The padding keys the ragged attention hands the fused kernel (the row's next tokens, here large values) change
    nothing: the same output and log-sum-exp as the real keys alone."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 23, 16, generator=g).to(dtype)
    k, v = torch.randn(1, 2, 32, 16, generator=g) * 4, torch.randn(1, 2, 32, 16, generator=g) * 100
    k[:, :, :19], v[:, :, :19] = k[:, :, :19] / 4, v[:, :, :19] / 100
    k, v = k.to(dtype), v.to(dtype)
    out, lse = attention_with_lse(q, k, v, causal=causal, scale=0.3, fused=fused, key_count=19)
    ref_out, ref_lse = attention_with_lse(q, k[:, :, :19], v[:, :, :19], causal=causal, scale=0.3, fused=fused)
    tol = 1e-5 if dtype == torch.float32 else 0.02  # bf16: one rounding step of outputs of about 1
    assert (out.float() - ref_out.float()).abs().max() <= tol and (lse - ref_lse).abs().max() < 1e-4
    assert out.float().abs().max() < 10  # none of the values of about 100 got in


def test_padded_keys_round_up_to_the_kernels_vector_width_within_the_row():
    assert [padded_keys(n, 1000) for n in (1, 16, 17, 300, 304)] == [16, 16, 32, 304, 304]
    assert padded_keys(300, 302) == 300 and padded_keys(300, 300) == 300  # never past the row's end, never in part


def test_merge_of_two_key_sets_is_attention_over_their_union():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 6, 8, generator=g)
    k, v = torch.randn(1, 4, 11, 8, generator=g), torch.randn(1, 4, 11, 8, generator=g)
    whole, _ = softmax_attention(q, k, v, 0.5)
    a, lse_a = softmax_attention(q, k[:, :, :7], v[:, :, :7], 0.5)
    b, lse_b = softmax_attention(q, k[:, :, 7:], v[:, :, 7:], 0.5)
    flat = lambda t: t[0].transpose(0, 1)  # noqa: E731  [heads, n, ...] -> [n, heads, ...]
    assert (merge(flat(a), flat(lse_a), flat(b), flat(lse_b)) - flat(whole)).abs().max() < 1e-6



def alone(backbone, seqs, positions):
    """The ground truth: the backbone on each sequence by itself, no padding, no cache, its own attention."""
    out = []
    with torch.inference_mode():
        for s, pos in zip(seqs, positions):
            hidden = backbone(input_ids=torch.tensor([s])).last_hidden_state[0]
            out.append(hidden[[p % len(s) for p in pos]])
    return out


def awkward_batch(seed=0, vocab=300):
    """Three prompts of different lengths with 1-, short and long continuations (so one suffix micro-batch mixes
    groups and padding), a duplicate, a sequence that is another's prefix, and one sharing nothing."""
    rng = random.Random(seed)
    heads = [[rng.randrange(3, vocab) for _ in range(n)] for n in (45, 70, 96)]
    seqs = [h + [rng.randrange(3, vocab) for _ in range(n)] for h in heads for n in (1, 5, 23, 40)]
    seqs += [seqs[3][:], heads[1][:60], [rng.randrange(3, vocab) for _ in range(33)]]
    positions = [[-1, 0, 3, len(s) // 2, len(s) - 2] if len(s) > 2 else [-1] for s in seqs]
    return seqs, positions


def max_diff(a, b):
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_engine_attention_equals_each_sequence_alone(models, kind):
    engine = models(kind).engine
    assert engine.engine_attention  # the CPU default for these backbones
    seqs, positions = awkward_batch()
    truth = alone(engine.backbone, seqs, positions)
    engine.stats.reset()
    shared = engine.hidden_at(seqs, positions)
    assert engine.stats.prefix_groups >= 3
    plain = engine.hidden_at(seqs, positions, prefix_reuse=False)
    assert max_diff(truth, shared) < TOL and max_diff(truth, plain) < TOL
    assert engine.config._attn_implementation == "sdpa"  # switched for the forwards only


@pytest.mark.parametrize("kind", ["bt_llama3", "bt_qwen3", "bt_gemma2"])
def test_last_layer_attends_from_the_read_positions_only(models, kind, monkeypatch):
    """One read per sequence (a reward's last token; one inside a shared prompt; one sequence another's prefix):
    the last layer of a forward end to end attends from those positions only, and the hidden states there are
    those of each sequence alone."""
    import rmplugins.engine.attention as attention

    engine = models(kind).engine
    seqs, _ = awkward_batch(seed=4)
    window = getattr(engine.config, "sliding_window", None) or 10**6
    seqs = [s for s in seqs if len(s) < window]
    positions = [[-1] for _ in seqs]
    positions[1] = [30]  # inside its group's 45-token prompt
    truth = alone(engine.backbone, seqs, positions)
    calls = []
    reads_only = attention._ragged_reads_only
    monkeypatch.setattr(attention, "_ragged_reads_only", lambda *a: calls.append(a[3].read_rows.numel()) or
                        reads_only(*a))
    engine.stats.reset()
    out = engine.hidden_at(seqs, positions)
    assert calls and sum(calls) <= len(seqs)
    assert engine.stats.prefix_groups >= 3 and max_diff(truth, out) < TOL


@pytest.mark.parametrize("kind", ["bt_gemma2", "genrm_gemma2"])
def test_engine_attention_with_soft_capping_and_sliding_layers(models, tiny, kind):
    """Gemma-2: attention logits soft-capped (applied by the engine attention in its math path) and every other
    layer a sliding window, which the engine honours by attending in its own way only when every sequence fits in
    the window; longer calls take the model's own attention."""
    rm = models(kind) if kind != "genrm_gemma2" else __import__("rmplugins").load_reward_model(
        tiny(kind), kind="genrm", judge="mt-bench-logits", device="cpu")
    engine = rm.engine
    assert engine.engine_attention and engine.config.attn_logit_softcapping
    window = engine.config.sliding_window
    rng = random.Random(3)
    heads = [[rng.randrange(3, 250) for _ in range(n)] for n in (30, 52, 71)]
    seqs = [h + [rng.randrange(3, 250) for _ in range(n)] for h in heads for n in (1, 6, 25, 40)]
    seqs = [s for s in seqs if len(s) < window]
    positions = [[-1, 0, 3, len(s) // 2] for s in seqs]
    truth = alone(engine.backbone, seqs, positions)
    engine.stats.reset()
    shared = engine.hidden_at(seqs, positions)
    assert engine.stats.prefix_groups >= 3 and max_diff(truth, shared) < TOL
    long = [seqs[0] + [rng.randrange(3, 250) for _ in range(window + 10 - len(seqs[0]))], seqs[1]]
    long_positions = [[-1, window + 5], [-1]]
    assert max_diff(alone(engine.backbone, long, long_positions), engine.hidden_at(long, long_positions)) < TOL


@pytest.mark.parametrize("kind", ["bt", "pair_pm"])
def test_generic_path_and_portable_math_agree(models, kind, monkeypatch):
    """engine_attention=False (the model's own masked attention and per-row cache copies) and the engine attention
    with its portable math instead of the fused CPU kernel give the same hidden states."""
    rm = models(kind)
    seqs, positions = awkward_batch(seed=1)
    truth = alone(rm.engine.backbone, seqs, positions)
    generic = ScoringEngine(rm.engine.backbone, rm.engine.pad_token_id, engine_attention=False, token_budget=512)
    assert max_diff(truth, generic.hidden_at(seqs, positions)) < TOL
    assert generic.stats.prefix_groups >= 3

    import rmplugins.engine.attention as attention

    original = attention.attention_with_lse
    monkeypatch.setattr(attention, "attention_with_lse", lambda *a, **kw: original(*a, **{**kw, "fused": False}))
    assert max_diff(truth, rm.engine.hidden_at(seqs, positions)) < TOL


def _pre_gqa_kernel(q, k, v, causal, mask, scale):
    """PyTorch's CPU kernel as written before its GQA support would read fewer key heads than query heads: query
    head h from key head h, by the key tensor's own head stride (past its heads, into the row's other numbers)."""
    from rmplugins.engine import cpu_flash

    k, v = (t.as_strided((t.shape[0], q.shape[1], *t.shape[2:]), t.stride(), t.storage_offset()) for t in (k, v))
    return cpu_flash.flash(q, k, v, causal, mask, scale)


def _equal_heads_only(q, k, v, causal, mask, scale):
    from rmplugins.engine import cpu_flash

    if k.shape[1] != q.shape[1]:
        raise RuntimeError("expected key heads to equal query heads")
    return cpu_flash.flash(q, k, v, causal, mask, scale)


def test_the_cpu_flash_kernel_is_checked_before_it_serves_grouped_heads():
    """PyTorch's CPU flash kernel reads grouped key/value heads only since 2.9; pyproject admits older torch.
    The kernel is probed once per dtype against a float32 softmax: this PyTorch's is used as it is; a kernel that
    misreads grouped heads or refuses them gets them repeated; one that fails or is wrong either way is not used."""
    from rmplugins.engine import cpu_flash

    for dtype in (torch.float32, torch.bfloat16):
        assert cpu_flash.check(dtype) == cpu_flash.verdict(dtype) == cpu_flash.GROUPED
        assert cpu_flash.check(dtype, _pre_gqa_kernel) == cpu_flash.REPEATED
        assert cpu_flash.check(dtype, _equal_heads_only) == cpu_flash.REPEATED

    def fails(*args):
        raise RuntimeError("no such kernel in this build")

    def off_by_a_little(*args):
        out, lse = cpu_flash.flash(*args)
        return out * 1.01, lse

    assert cpu_flash.check(torch.float32, fails) == cpu_flash.check(torch.float32, off_by_a_little) == cpu_flash.MATH


@pytest.mark.parametrize("how", ["repeated", "math"])
def test_the_engine_is_exact_however_the_kernel_serves_grouped_heads(models, how, monkeypatch, caplog):
    """Where the probe finds the kernel needs repeated heads, or cannot be used, the engine's hidden states are
    those of each sequence alone, as with the kernel reading grouped heads (2 query heads over 1 here)."""
    import logging

    from rmplugins.engine import cpu_flash

    engine = models("bt_qwen3").engine
    seqs, positions = awkward_batch(seed=3)
    truth = alone(engine.backbone, seqs, positions)
    grouped = engine.hidden_at(seqs, positions)
    monkeypatch.setattr(cpu_flash, "_verdicts", {})
    monkeypatch.setattr(cpu_flash, "check", lambda dtype, kernel=None: how)
    with caplog.at_level(logging.WARNING, logger="rmplugins"):
        served = engine.hidden_at(seqs, positions)
    assert cpu_flash._verdicts == {torch.float32: how}
    assert max_diff(truth, served) < TOL and max_diff(grouped, served) < TOL
    assert "reads grouped key/value heads in place from 2.9 on" in caplog.text


def test_small_budget_splits_groups_across_suffix_batches(models):
    engine = models("armorm").engine
    seqs, positions = awkward_batch(seed=2)
    truth = alone(engine.backbone, seqs, positions)
    engine.token_budget = 64
    try:
        engine.stats.reset()
        out = engine.hidden_at(seqs, positions)
    finally:
        engine.token_budget = None
    assert engine.stats.forwards > 6 and max_diff(truth, out) < TOL


def test_attention_implementation_is_restored_after_an_error(models):
    engine = models("bt_llama3").engine
    with pytest.raises(IndexError):
        engine.hidden_at([[5, 6, 7]], [[9]])
    before = engine.config._attn_implementation

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    engine.backbone.layers[1].mlp.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            engine.hidden_at([[5, 6, 7, 8]], [[-1]])
    finally:
        engine.backbone.layers[1].mlp._forward_hooks.clear()
    assert engine.config._attn_implementation == before


def test_sliding_window_shorter_than_a_sequence_uses_the_model_attention(models):
    rm = models("bt")  # Mistral
    engine = rm.engine
    window = engine.config.sliding_window
    engine.config.sliding_window = 20
    try:
        seqs, positions = awkward_batch(seed=3)
        truth = alone(engine.backbone, seqs, positions)
        out = engine.hidden_at(seqs, positions)
        assert not engine.worker.attend_in_engine and engine.stats.prefix_groups >= 0
    finally:
        engine.config.sliding_window = window
    assert max_diff(truth, out) < TOL


def test_unsupported_backbones_keep_their_own_attention(models):
    pairrm = models("pairrm")  # DeBERTa: bidirectional
    assert not supports_engine_attention(pairrm.engine.backbone) and not pairrm.engine.engine_attention
    with pytest.raises(ValueError, match="engine_attention=True is not available"):
        ScoringEngine(pairrm.engine.backbone, 0, causal=False, engine_attention=True)
