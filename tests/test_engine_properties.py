"""The engine against each backbone's own forward, over call structures hypothesis draws: prompts shared in part or
in whole, duplicates, one-token sequences, negative positions, two calls in a row (kept prefixes, the prompt cache),
token budgets smaller than one sequence, the engine's attention on and off, end to end or in padded batches. Each
sequence's hidden states at its positions must equal those of transformers' own model (eager attention, loaded on
its own) run on that sequence alone. The example tests in ``test_engine.py`` pin one structure each; this one looks
for the structure nobody wrote down (it found one: ``test_a_short_prompt_beside_a_long_one_keeps_its_window``).
Bounded: a fixed number of examples, seeded, so every run draws the same ones with one release of hypothesis (another
release may draw others; a correct engine passes any of them, float32 noise staying under a tenth of the bound).
"""

import contextlib
import zlib

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

# How the second call may reuse the first's work: not at all (each sequence whole), prefix groups within a call,
# prefixes kept across the two calls (``keep_prefixes``, as a pair-PM tournament's rounds), the prompt cache (as a
# server's batches), and a prompt cache so small it drops entries
MODES = {"whole": dict(reuse=False), "shared": dict(reuse=None), "kept": dict(reuse=None, keep=True),
         "prompt cache": dict(reuse=None, cache=100_000), "small prompt cache": dict(reuse=None, cache=50)}
# Every mode on Llama (the engine's attention) and GPT-OSS (attention sinks and windows: the model's own attention
# with a cache, the generic path); fewer on the attention's variants: Qwen3 (q/k norms) and Gemma-2 (soft-capping,
# a 128-token window the drawn sequences cross, which "whole" checks beside the prefix groups)
CASES = ([(kind, mode) for kind in ("bt_llama3", "bt_gpt_oss") for mode in MODES]
         + [("bt_qwen3", "shared"), ("bt_qwen3", "prompt cache")]
         + [("bt_gemma2", "whole"), ("bt_gemma2", "shared"), ("bt_gemma2", "prompt cache")])
SETTINGS = settings(max_examples=25, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@st.composite
def two_calls(draw, longest: list[int]):
    """Two calls' (sequences, positions) over up to four prompts. Each call continues some of the prompts, up to five
    times each, from a point inside the prompt (so sequences share all of a prompt, a part, or are a prefix of
    another), sometimes with a duplicate; the second call also branches off sequences of the first at any token, as
    a server's later batches do. A small alphabet makes prompts that start alike by chance."""
    longest = draw(st.sampled_from(longest))
    alphabet = draw(st.sampled_from([3, 20, 300]))
    token = st.integers(1, alphabet)
    lengths = draw(st.lists(st.integers(1, longest), min_size=1, max_size=4))  # not a list's short average size
    prompts = [draw(st.lists(token, min_size=n, max_size=n)) for n in lengths]

    def call(earlier=()):
        sequences = []
        for prompt in draw(st.lists(st.sampled_from(prompts), min_size=1, max_size=len(prompts), unique_by=id)):
            for _ in range(draw(st.integers(1, 5))):
                sequences.append(prompt[: draw(st.integers(1, len(prompt)))] + draw(st.lists(token, max_size=30)))
        for before in draw(st.lists(st.sampled_from(earlier), max_size=6)) if earlier else []:
            sequences.append(before[: draw(st.integers(1, len(before)))] + draw(st.lists(token, max_size=30)))
        if draw(st.booleans()):
            sequences.append(list(draw(st.sampled_from(sequences))))
        sequences = draw(st.permutations(sequences))
        return sequences, [draw(st.lists(st.integers(-len(s), len(s) - 1), min_size=1, max_size=4)) for s in sequences]

    first = call()
    return first, call(first[0])


@pytest.fixture(scope="module")
def backbones(models, tiny):
    """``backbones(kind)`` -> (its engine, the reference: transformers' model loaded on its own with eager attention,
    one sequence at a time, the longest prompts to draw)."""
    built = {}

    def get(kind):
        if kind not in built:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                tiny(kind), dtype=torch.float32, attn_implementation="eager")
            done = {}

            def reference(sequence):
                if tuple(sequence) not in done:
                    with torch.inference_mode():
                        out = model.base_model(input_ids=torch.tensor([sequence])).last_hidden_state[0]
                    done[tuple(sequence)] = out
                return done[tuple(sequence)]

            engine = models(kind).engine
            window = getattr(engine.config, "sliding_window", None) or 0
            # a window: prompts that cross it, and prompts whose sequences all fit in it (so prefixes are shared)
            built[kind] = engine, reference, [window - 31, 200] if window and window < 200 else [70]
        return built[kind]

    return get


@pytest.mark.parametrize(("kind", "mode"), CASES)
def test_every_call_structure_gives_each_sequence_its_own_forward(backbones, kind, mode):
    engine, reference, longest = backbones(kind)
    supported = engine.engine_attention  # on by default exactly where it is available on CPU
    defaults = (engine.engine_attention, engine.ragged, engine.token_budget)
    reuse, keep, cache = MODES[mode]["reuse"], MODES[mode].get("keep", False), MODES[mode].get("cache", 0)

    @seed(zlib.crc32(f"{kind} {mode}".encode()))  # fixed examples, other ones for each backbone and mode
    @SETTINGS
    @given(calls=two_calls(longest), engine_attention=st.booleans(), ragged=st.booleans(),
           budget=st.sampled_from([None, 8, 33, 200]))
    def check(calls, engine_attention, ragged, budget):
        engine.engine_attention = engine_attention and supported
        engine.ragged, engine.token_budget, engine.prompt_cache_tokens = ragged, budget, cache
        try:
            with engine.keep_prefixes() if keep else contextlib.nullcontext():
                outs = [engine.hidden_at(s, p, prefix_reuse=reuse) for s, p in calls]
        finally:
            engine.prompt_cache_tokens = 0
        for (sequences, positions), out in zip(calls, outs):
            for sequence, pos, hidden in zip(sequences, positions, out):
                want = reference(sequence)[[p % len(sequence) for p in pos]]
                # float32: another batch moves the last bits (at most 4e-6 relative over these examples: 0.08 of this
                # bound), a wrong key or position the first ones (a kept prefix one token long: 0.12 off, 800x it)
                bound = 5e-5 * max(1.0, want.abs().max().item())
                assert (hidden - want).abs().max().item() < bound, (kind, len(sequence), pos)

    try:
        check()
    finally:
        engine.engine_attention, engine.ragged, engine.token_budget = defaults


@pytest.mark.parametrize("kind", ["bt_gpt_oss", "bt_gemma2"])
def test_a_short_prompt_beside_a_long_one_keeps_its_window(backbones, kind):
    """The case the property found (a fresh clone's first run): the model's own attention, two prompt groups in one
    suffix batch, every sequence inside the 128-token window. Each row's cache was padded to the longer prompt on
    its right, so a 100-token sequence behind a 27-token prompt sat at cache index 75 + 73 = 148, and transformers'
    window (drawn by cache index) dropped its first tokens from position 80 on: 0.08 off there. Left-padded now.
    GPT-OSS runs this path by default, Gemma-2 on a GPU."""
    engine, reference, _ = backbones(kind)
    defaults = (engine.engine_attention, engine.ragged)
    long_prompt, short_prompt = [1, 3, 3, 1, 2, 3] + [1] * 69, [2] + [1] * 26
    sequences = [long_prompt + [1], long_prompt + [1] * 32, short_prompt + [1], short_prompt + [1] * 73,
                 short_prompt + [1] * 5]
    engine.engine_attention, engine.ragged = False, False
    try:
        engine.stats.reset()
        out = engine.hidden_at(sequences, [list(range(len(s))) for s in sequences])
        assert engine.stats.prefix_groups == 2 and max(map(len, sequences)) < engine.config.sliding_window
    finally:
        engine.engine_attention, engine.ragged = defaults
    for sequence, hidden in zip(sequences, out):
        assert (hidden - reference(sequence)).abs().max().item() < 1e-4, len(sequence)
