"""The engine's fast paths: sequences laid end to end in one forward (rmplugins.engine.ragged), the fused CPU kernels
for half precision (rmplugins.engine.fused), and freed memory kept for the next forward (rmplugins.engine.allocator).
Each against the path it replaces and against the backbone on each sequence alone."""

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from test_attention import CAUSAL_KINDS, TOL, alone, awkward_batch, max_diff

from rmplugins import load_reward_model
from rmplugins.engine import fused, projections
from rmplugins.engine.ragged import Piece, lay_out
from rmplugins.engine.shapes import ROUND_BELOW, rounded, rounds

HALF_KINDS = ["bt", "bt_llama3", "bt_qwen25", "bt_qwen3", "bt_gemma2"]  # Mistral, Llama-3, Qwen2, Qwen3, Gemma-2


def test_lay_out_places_pieces_end_to_end_and_plans_their_attention():
    prompt, other = Piece([5, 6, 7, 8]), Piece([9, 9])
    pieces = [prompt, Piece([1, 2], start=4, prompt=0), Piece([3], start=4, prompt=0), other]
    layout = lay_out(pieces)
    assert layout.ids.tolist() == [[5, 6, 7, 8, 1, 2, 3, 9, 9]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 4, 0, 1]]  # continuations go on from their prompt
    assert layout.offsets == [0, 4, 6, 7]
    # every position but the prompt's attends within its own piece exactly once, in a bucket row that starts where
    # its piece starts; the prompt attends in its span's call (with its continuations' queries over its keys)
    assert layout.alone == []  # short pieces: gathered into length buckets
    dest = torch.cat([d for *_, d in layout.buckets]).sort().values
    assert dest.tolist() == list(range(4, 9))
    for index, at_row, at_col, d in layout.buckets:
        assert (index[at_row, at_col] == d).all()
        for row in index.tolist():
            assert row[0] in layout.offsets
    assert layout.spans == [(0, 4, 7)] and layout.kept_spans == []
    long = lay_out([Piece(list(range(300))), Piece([1, 2], start=300, prompt=0), Piece([4] * 260)])
    assert long.alone == [(302, 260)] and [d.tolist() for *_, d in long.buckets] == [[300, 301]]
    assert long.spans == [(0, 300, 302)]
    kept = lay_out([Piece([1]), Piece([2, 3], start=5, kept=0), Piece([4], start=5, kept=0), Piece([5], start=2,
                                                                                                   kept=1)])
    assert kept.spans == [] and kept.kept_spans == [(1, 4), (4, 5)]
    with pytest.raises(ValueError, match="follow it directly"):
        lay_out([prompt, other, Piece([1], start=4, prompt=0)])
    with pytest.raises(ValueError, match="follow one another"):
        lay_out([Piece([1], start=3, kept=0), other, Piece([1], start=3, kept=0)])
    with pytest.raises(ValueError, match="whole prompt"):
        lay_out([prompt, Piece([1], start=2, prompt=0)])
    with pytest.raises(ValueError, match="empty"):
        lay_out([Piece([])])


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_padded_micro_batches_still_equal_each_sequence_alone(models, kind):
    """``engine.ragged = False``: the prefix pass and padded suffix batches (the path for groups larger than one
    forward and for prompts kept by an earlier call) against the ground truth."""
    engine = models(kind).engine
    seqs, positions = awkward_batch(seed=5)
    truth = alone(engine.backbone, seqs, positions)
    engine.ragged = False
    try:
        engine.stats.reset()
        padded = engine.hidden_at(seqs, positions)
        assert engine.stats.forwards > 1 and engine.stats.tokens_padded > engine.stats.tokens_processed
    finally:
        engine.ragged = True
    engine.stats.reset()
    ragged = engine.hidden_at(seqs, positions)
    assert engine.stats.forwards == 1 and engine.stats.tokens_padded == engine.stats.tokens_processed
    assert max_diff(truth, padded) < TOL and max_diff(truth, ragged) < TOL


def test_a_group_larger_than_the_budget_runs_as_prefix_and_suffixes(models):
    engine = models("bt_qwen3").engine
    seqs, positions = awkward_batch(seed=6)
    truth = alone(engine.backbone, seqs, positions)
    engine.token_budget = 150  # the 96-token prompt's group is larger; the others fit
    try:
        engine.stats.reset()
        out = engine.hidden_at(seqs, positions)
    finally:
        engine.token_budget = None
    assert engine.stats.forwards > 2 and max_diff(truth, out) < TOL


@pytest.fixture(scope="module")
def half_models(tiny):
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = load_reward_model(tiny(kind), device="cpu", dtype="bfloat16")
        return cache[kind]
    return get


@pytest.fixture
def joined_at_any_width(monkeypatch):
    """The tiny models' keys and values are narrower than a joint product is made for (``JOIN_MIN_WIDTH``): joined
    here all the same, so the path real models take is the one tested."""
    monkeypatch.setattr(projections, "JOIN_MIN_WIDTH", 0)


@pytest.mark.parametrize("kind", HALF_KINDS)
def test_fused_kernels_in_bf16_agree_with_the_models_own_code(half_models, models, kind, joined_at_any_width):
    """In bf16 on CPU the norms, gated MLPs and query/key preparation run fused: every one of them is switched, the
    hidden states agree with the eager forwards to bf16's rounding, and both with float32 as closely."""
    engine = half_models(kind).engine
    seqs, positions = awkward_batch(seed=7)
    fast = engine.hidden_at(seqs, positions)
    switched = {type(m).__name__ for m, _ in engine._fused.replacements}
    layers = len(engine.backbone.layers)
    norms = sum(type(m).__name__ in fused.NORMS for m in engine.backbone.modules())
    assert len(engine._fused.replacements) == norms + layers and len(engine._fused.attention) == layers
    assert any(name.endswith("RMSNorm") for name in switched) and any(name.endswith("MLP") for name in switched)
    for module, forward in engine._fused.attention if engine.worker.attend_in_engine else ():  # (Gemma-2's tiny
        # window is shorter than this batch: its own attention) keys and values came from one product
        assert torch.equal(forward.keys_values.weight, torch.cat([module.k_proj.weight, module.v_proj.weight]))
    engine.fused_kernels = False
    try:
        eager = engine.hidden_at(seqs, positions)
    finally:
        engine.fused_kernels = None
    exact = alone(models(kind).engine.backbone, seqs, positions)
    scale = max(h.abs().max().item() for h in exact)
    assert max_diff(fast, eager) < 0.03 * scale
    assert abs(max_diff(fast, exact) - max_diff(eager, exact)) < 0.03 * scale


@pytest.mark.parametrize("kind", ["bt_qwen3", "bt_qwen25"])  # Qwen2's keys and values have biases
def test_keys_and_values_as_one_product_follow_the_weights_and_step_aside_for_hooks(tiny, kind, monkeypatch,
                                                                                   joined_at_any_width):
    """In bf16 on CPU the keys and values come from one product of the joint weights, made again when the model's
    weights change in place or are replaced, so a reward never comes from stale weights; a hooked projection runs
    its own forward (its hook sees every call)."""
    engine = load_reward_model(tiny(kind), device="cpu", dtype="bfloat16").engine  # its weights are changed here
    seqs, positions = awkward_batch(seed=11)

    def both():
        fast = engine.hidden_at(seqs, positions)
        engine.fused_kernels = False
        try:
            return fast, engine.hidden_at(seqs, positions)
        finally:
            engine.fused_kernels = None

    fast, eager = both()
    scale = max(h.abs().max().item() for h in eager)
    assert max_diff(fast, eager) < 0.03 * scale
    engine.token_budget = 150  # a group larger runs as a prefix pass (its cache keeps the values) and suffixes
    try:
        engine.stats.reset()
        split = engine.hidden_at(seqs, positions)
        assert engine.stats.forwards > 2
    finally:
        engine.token_budget = None
    assert max_diff(split, eager) < 0.03 * scale
    attentions = [layer.self_attn for layer in engine.backbone.layers]
    with torch.no_grad():
        for attn in attentions:  # in place (as load_state_dict writes), then replaced
            attn.k_proj.weight.mul_(-1.5)
            if attn.v_proj.bias is not None:
                attn.v_proj.bias.add_(0.5)
        attentions[0].v_proj.weight.data = attentions[0].v_proj.weight.data.flip(0).contiguous()
    fast_after, eager_after = both()
    assert max_diff(eager_after, eager) > 0.1 * scale  # the change matters
    assert max_diff(fast_after, eager_after) < 0.03 * scale
    joint = dict(engine._fused.attention)[attentions[0]].keys_values
    assert torch.equal(joint.weight, torch.cat([attentions[0].k_proj.weight, attentions[0].v_proj.weight]))
    calls = []
    hook = attentions[1].k_proj.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    try:
        hooked = engine.hidden_at(seqs, positions)
    finally:
        hook.remove()
    assert calls and max_diff(hooked, eager_after) < 0.03 * scale
    monkeypatch.setattr(projections, "JOIN_BELOW", 1)  # rows this long or longer: two products (one layout more)
    assert max_diff(engine.hidden_at(seqs, positions), eager_after) < 0.03 * scale
    monkeypatch.setattr(projections, "JOIN_BELOW", 2048)
    monkeypatch.setattr(projections, "JOIN_MIN_WIDTH", 1024)  # as for a real model this narrow: two products
    assert max_diff(engine.hidden_at(seqs, positions), eager_after) < 0.03 * scale
    assert joint.weight is None  # no joint copy kept where it is not used


def test_rounded_lengths_lie_on_a_grid_of_a_sixteenth_and_never_past_the_budget():
    assert [rounded(t) for t in (1, 16, 17, 255, 256, 351, 513, 1025, 2047)] == [16, 16, 32, 256, 256, 352, 544,
                                                                                1088, 2048]
    assert rounded(ROUND_BELOW) == ROUND_BELOW and rounded(3001) == 3001 and rounded(0) == 0
    for t in range(1, ROUND_BELOW):
        r = rounded(t)
        assert t <= r and (r - t) * 16 <= max(t, 256)           # at most a 16th more (16 tokens below 256)
        assert rounded(r) == r and rounded(r - 1) == r          # a grid: every length rounds to its top
    assert rounded(305, limit=310) == 310 and rounded(300, limit=310) == 304 and rounded(305, limit=200) == 305
    assert rounds(torch.device("cpu"), torch.bfloat16) and rounds(torch.device("cpu"), torch.float16)
    assert not rounds(torch.device("cpu"), torch.float32) and not rounds(torch.device("cuda"), torch.bfloat16)


@pytest.mark.parametrize("kind", ["bt_qwen3", "bt_llama3"])
def test_half_precision_rows_are_rounded_and_the_filler_changes_nothing(half_models, models, kind):
    """In bf16 on CPU a forward's row and its last layer's read rows run rounded up to the grid (oneDNN then finds
    its kernels built for the next call of a nearby length): the filler is counted as padding, the read rows' copies
    are dropped, and the hidden states agree with the unrounded forward to bf16's rounding."""
    engine = half_models(kind).engine
    seqs, positions = awkward_batch(seed=9)
    last = engine.backbone.layers[-1].self_attn.q_proj
    rows_seen = []
    hook = last.register_forward_hook(lambda m, args, out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1])
                                                                           .shape[0]))
    try:
        engine.stats.reset()
        rounded_out = engine.hidden_at(seqs, positions)
        processed, padded = engine.stats.tokens_processed, engine.stats.tokens_padded
        engine.round_shapes = False
        engine.stats.reset()
        plain = engine.hidden_at(seqs, positions)
    finally:
        engine.round_shapes = None
        hook.remove()
    assert engine.stats.forwards == 1 and engine.stats.tokens_processed == processed == engine.stats.tokens_padded
    assert padded == rounded(processed) > processed  # this batch's row is off the grid
    reads = rows_seen[1]  # the unrounded forward's: one row per distinct read position
    assert rows_seen[0] == rounded(reads) > reads
    exact = alone(models(kind).engine.backbone, seqs, positions)
    scale = max(h.abs().max().item() for h in exact)
    assert max_diff(rounded_out, plain) < 0.03 * scale
    assert abs(max_diff(rounded_out, exact) - max_diff(plain, exact)) < 0.03 * scale
    float32 = models(kind).engine  # multiplies with MKL: never rounded
    float32.stats.reset()
    float32.hidden_at(seqs, positions)
    assert float32.stats.forwards == 1 and float32.stats.tokens_padded == float32.stats.tokens_processed == processed


def test_a_module_whose_formula_differs_keeps_its_own_forward(half_models, monkeypatch):
    """Never switched on the class name alone: a norm whose output the fused formula does not reproduce on the probe
    keeps its forward (here Qwen3's norms told they were Gemma-2's ``1 + weight``)."""
    backbone = half_models("bt_qwen3").engine.backbone
    monkeypatch.setitem(fused.NORMS, "Qwen3RMSNorm", (fused.rms_norm_plus_one, "variance_epsilon"))
    forwards = fused.FusedForwards(backbone)
    names = {type(m).__name__ for m, _ in forwards.replacements}
    assert "Qwen3RMSNorm" not in names and "Qwen3MLP" in names
    assert forwards.attention == []  # its query/key norms are not the formula either


def test_no_compiler_means_eager_kernels_and_one_warning(half_models, monkeypatch, caplog):
    engine = half_models("bt_llama3").engine
    seqs, positions = awkward_batch(seed=8)
    engine.fused_kernels = False
    eager = engine.hidden_at(seqs, positions)
    engine.fused_kernels = None

    def no_compiler(fn, dtype=None):
        def fails(*args, **kwargs):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\nno g++ found")
        return fails

    monkeypatch.setattr(fused, "_broken", [])
    monkeypatch.setattr(fused, "compiled", no_compiler)
    monkeypatch.setattr(engine, "_fused", None)
    with caplog.at_level(logging.WARNING, logger="rmplugins"):
        out = engine.hidden_at(seqs, positions)
        engine.hidden_at(seqs, positions)
    warnings = [r for r in caplog.records if "fused CPU kernels are unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "CppCompileError" in warnings[0].getMessage()
    assert engine.worker.fused is None and max_diff(out, eager) == 0.0


def test_a_kernel_its_compiler_gives_up_on_later_runs_eagerly(half_models, monkeypatch, caplog):
    """Compiled once, a kernel can still fail later (dynamo's recompile limit, reached in a long-lived process
    that meets many dtypes, thread counts and shapes, raises under fullgraph): that kernel runs its own formula
    from then on, said once, and the forward's numbers are those of the eager kernels."""
    engine = half_models("bt_qwen3").engine
    seqs, positions = awkward_batch(seed=9)
    engine.fused_kernels = False
    eager = engine.hidden_at(seqs, positions)
    engine.fused_kernels = None
    engine.hidden_at(seqs, positions)  # compiled and working
    kernel = fused.compiled(fused.silu_times, torch.bfloat16)
    assert isinstance(kernel, fused.EagerOnFailure) and kernel.fast is not None

    def limit(*args):
        raise RuntimeError("FailOnRecompileLimitHit: Hard failure due to fullgraph=True")

    monkeypatch.setattr(kernel, "fast", limit)
    calls = []
    monkeypatch.setattr(kernel, "fn", lambda *a: calls.append(1) or fused.silu_times(*a))
    with caplog.at_level(logging.WARNING, logger="rmplugins"):
        out = engine.hidden_at(seqs, positions)
        engine.hidden_at(seqs, positions)
    warnings = [r for r in caplog.records if "runs eagerly from now on" in r.getMessage()]
    assert len(warnings) == 1 and "RecompileLimit" in warnings[0].getMessage() and kernel.fast is None
    assert calls and max_diff(out, eager) < 0.05 * max(o.float().abs().max().item() for o in eager)


WARM_UP_SCRIPT = """
import json, sys, torch
from torch._dynamo.utils import counters
from rmplugins import load_reward_model

prompts = ["What is 2+2?", "What is 2+2?", "Name a colour, please.", "What is 2+2?"]
completions = ["4", "It is four, since two and two make four.", "Blue.", "5"]
calls = [([0], 1), ([0], 1), ([0, 1, 2], 1), ([3], 1), ([0, 1, 2], None), ([3], None)]  # (rows, threads)
configured = torch.get_num_threads()


def serve(rm):
    rm.engine.prompt_cache_tokens, rm.engine.fit_threads = 100_000, False  # a server's; each call's threads set here
    out = []
    for rows, threads in calls:
        torch.set_num_threads(threads or configured)
        out.append(rm.score([prompts[i] for i in rows], [completions[i] for i in rows]))
    torch.set_num_threads(configured)
    return out


rm = load_reward_model(sys.argv[1], device="cpu", dtype="bfloat16")
took = rm.engine.warm_up() if sys.argv[2] == "warm" else 0.0
left = {"stats": sorted(set(rm.engine.stats.as_dict().values())), "cache": rm.engine.prompt_cache_info()}
graphs = counters["stats"]["unique_graphs"]
got = serve(rm)
new_graphs, hits = counters["stats"]["unique_graphs"] - graphs, rm.engine.stats.prefix_cache_hits
print(json.dumps({"took": took, "left": left, "warm_graphs": graphs, "new_graphs": new_graphs, "hits": hits,
                  "got": got}))
"""


def test_warm_up_compiles_what_the_first_requests_would(tiny):
    """``rmplugins serve`` warms the engine before ``/health`` answers: a cold compile of the fused kernels took
    17 s on a server's first request (AReaL gives a reward call 15 s) and another 1 s on the next. After
    ``warm_up`` the calls a server makes (one sequence, the same again from the prompt cache, a prompt's group, a
    lone continuation of a cached prompt; on one thread and on the configured count) compile nothing more (a new
    process: compiled kernels are the process's), the warm-up left nothing counted or cached, and the rewards are,
    bit for bit, those of an unwarmed model making the same calls. Without it the same calls compile."""
    import json

    runs = {}
    for mode in ("warm", "cold"):
        res = subprocess.run([sys.executable, "-c", WARM_UP_SCRIPT, str(tiny("bt_qwen3")), mode],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    warm = runs["warm"]
    assert warm["took"] > 0 and warm["left"] == {"stats": [0], "cache": {"limit_tokens": 0, "held_tokens": 0,
                                                                          "entries": 0}}
    assert warm["new_graphs"] == 0, "a call compiled a kernel the warm-up did not"
    assert runs["cold"]["new_graphs"] > 0  # the same calls without the warm-up compile (the test can fail)
    # nor more than they would: its probes once ran with gradients on and compiled two training graphs besides
    # (forward and backward: 16 graphs where the calls compile 15, and 38 s instead of 23 on a 2-core CPU)
    assert warm["warm_graphs"] <= runs["cold"]["new_graphs"]
    assert warm["hits"] > 0 and warm["got"] == runs["cold"]["got"]  # the warm-up changes no reward


def test_rmplugins_serve_warms_up_before_answering(tiny):
    """The server compiles before ``/health`` answers (logged with its time), and counts none of it."""
    import json
    import urllib.request

    from served import rmplugins_serve

    with rmplugins_serve(["--model", str(tiny("bt_qwen3")), "--dtype", "bfloat16"]) as (_, url, log):
        with urllib.request.urlopen(url + "/metrics.json", timeout=30) as answer:
            engine = json.loads(answer.read())["engine"]
        assert any("compiled the fused CPU kernels before serving" in line for line in log), "".join(log)[-2000:]
        assert engine["calls"] == 0 and engine["tokens_processed"] == 0


LADDER_SCRIPT = """
import json, logging, sys, torch
from rmplugins import load_reward_model
from rmplugins.engine import fused
from rmplugins.engine.threads import thread_counts

rm = load_reward_model(sys.argv[1], device="cpu", dtype="bfloat16")  # (on a CPU without bf16 hardware: warned)
warnings = []  # from the forwards
logging.getLogger("rmplugins").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: warnings.append(
    r.getMessage())})(logging.WARNING))
rm.engine.fit_threads, rm.engine.prompt_cache_tokens = False, 100_000
prompts, completions = ["What is 2+2?", "What is 2+2?", "Hi there"], ["4", "Four, since two and two make four.", "yo"]
for threads in thread_counts(8):  # every count a forward may fall to on 8 cores
    torch.set_num_threads(threads)
    rm.score(prompts[:1], completions[:1]), rm.score(prompts, completions), rm.score(prompts[:1], ["x"])
print(json.dumps({"compiled": [k.fast is not None for k in fused._compiled.values()], "warnings": warnings}))
"""


def test_every_thread_count_a_forward_falls_to_keeps_its_compiled_kernels(tiny):
    """Each thread count is a graph of its own per kernel; with dynamo's default of 8 graphs per kernel the merge
    of the engine attention ran eagerly for good from the fourth thread count on (measured on 4+ cores under a
    changing load). Over every count of an 8-core machine's ladder, each kernel stays compiled, nothing warned."""
    import json

    res = subprocess.run([sys.executable, "-c", LADDER_SCRIPT, str(tiny("bt_qwen3"))], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(out["compiled"]) >= 4 and all(out["compiled"]) and out["warnings"] == [], out


def test_running_out_of_memory_is_not_the_compilers_failure():
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    kernel = fused.EagerOnFailure(fused.silu_times, out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        kernel(torch.ones(3), torch.ones(3))
    assert kernel.fast is out_of_memory  # still compiled: the engine splits the batch and tries again


def test_float32_runs_fused_only_for_a_model_of_real_size(models):
    engine = models("bt_qwen3").engine  # hidden size 64: a compile it would never earn back
    engine.hidden_at([[5, 6, 7]], [[-1]])
    assert engine.worker.fused is None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fused.pays(cpu, torch.float32, 1024) and fused.pays(cpu, torch.float32, fused.FLOAT32_MIN_HIDDEN)
    assert not fused.pays(cpu, torch.float32, 64) and not fused.pays(cpu, torch.float32, None)
    assert fused.pays(cpu, torch.bfloat16, 64) and fused.pays(cpu, torch.float16, 64)
    assert not fused.pays(cuda, torch.bfloat16, 4096) and not fused.pays(cuda, torch.float32, 4096)


@pytest.mark.parametrize("kind", ["bt_llama3", "bt_qwen3", "bt_gemma2"])
def test_fused_kernels_in_float32_agree_with_the_models_own_code_to_float_rounding(models, kind, monkeypatch, caplog):
    """Switched on in float32 (as for a model of real size), every norm, MLP and query/key preparation runs fused, and
    the hidden states are the eager forward's to float32 rounding: the same formulas, summed in another order."""
    engine = models(kind).engine
    seqs, positions = awkward_batch(seed=9)
    eager = engine.hidden_at(seqs, positions)
    monkeypatch.setattr(engine, "_fused", None)
    engine.fused_kernels = True
    try:
        with caplog.at_level(logging.INFO, logger="rmplugins"):
            fast = engine.hidden_at(seqs, positions)
            engine.hidden_at(seqs[:1], positions[:1])
        said = [r.getMessage() for r in caplog.records if "run fused CPU kernels" in r.getMessage()]
        assert len(said) == 1 and "float32" in said[0]  # once, when they are first compiled
        layers = len(engine.backbone.layers)
        norms = sum(type(m).__name__ in fused.NORMS for m in engine.backbone.modules())
        assert engine.worker.fused is engine._fused
        assert len(engine._fused.replacements) == norms + layers and len(engine._fused.attention) == layers
    finally:
        engine.fused_kernels = None
    scale = max(h.abs().max().item() for h in eager)
    assert max_diff(fast, eager) < 2e-5 * scale


ALLOCATIONS = textwrap.dedent("""
    import resource, sys, torch
    if sys.argv[1] == "keep":
        from rmplugins.engine.allocator import keep_freed_memory
        assert keep_freed_memory()
    def layer():  # a forward's transients: several 16-30 MB activations freed together
        held = [torch.ones(n << 20, dtype=torch.uint8) for n in (24, 30, 24, 16)]
        del held
    layer()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        layer()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_activations_are_reused_without_page_faults():
    """glibc by default maps and unmaps blocks this large on every forward (a page fault per 4 KiB touched); kept,
    the next forward reuses them."""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", ALLOCATIONS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])
    default, kept = faults("default"), faults("keep")
    pages = 10 * (24 + 30 + 24 + 16) * 256  # every layer touching all fresh pages
    assert default > pages // 10 and kept * 5 < default  # measured here: 47-61 thousand against 4 thousand
