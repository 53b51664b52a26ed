"""The scoring engine: prefix reuse equals the plain path, token-level fallback, budget batching order,
out-of-memory split-and-retry, token accounting, and the prefix planner."""

import logging
import random
import threading

import pytest
import torch

from rmplugins.engine import ScoringEngine
from rmplugins.engine.prefix import common_prefix_len, plan_groups, unique_token_floor

TOL = 2e-5
CAUSAL_KINDS = ["bt_llama3", "armorm", "pair_pm", "gpm"]



def _groups_of_ids(seed=0, vocab=300, prompts=3, per_prompt=4):
    rng = random.Random(seed)
    heads = [[rng.randrange(vocab) for _ in range(rng.randint(40, 90))] for _ in range(prompts)]
    seqs = [h + [rng.randrange(vocab) for _ in range(rng.randint(1, 30))] for h in heads for _ in range(per_prompt)]
    return heads, seqs


def _max_diff(a, b):
    assert len(a) == len(b)
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_prefix_reuse_matches_plain_path(models, kind):
    engine = models(kind).engine
    heads, seqs = _groups_of_ids()
    seqs += [seqs[0][:], heads[1][:50], heads[2] + [7]]  # a duplicate, a prefix of others, a 1-token suffix
    positions = [[-1, 2, len(s) // 2, len(s) - 2] for s in seqs]  # inside the shared prefix and after it
    plain = engine.hidden_at(seqs, positions, prefix_reuse=False)
    engine.stats.reset()
    shared = engine.hidden_at(seqs, positions)
    assert engine.stats.prefix_groups == 3
    if engine.worker.attend_in_engine and engine.ragged:  # everything end to end in one forward, no padding
        assert engine.stats.forwards == 1 and engine.stats.tokens_padded == engine.stats.tokens_processed
    else:  # a prefix pass and suffix batches
        assert 2 <= engine.stats.forwards <= 4
    assert _max_diff(plain, shared) < TOL
    assert all(h.shape == (4, engine.config.hidden_size) for h in shared)


@pytest.mark.parametrize("kind", ["bt_llama3", "armorm", "gpm"])
def test_family_scores_with_and_without_prefix_reuse(models, kind):
    rm = models(kind)
    prompt = "Explain why the digital age is important for reading books, step by step, with an example. " * 4
    candidates = ["Sure, here is the answer.", "No.", "Reading books in the digital age is lovely because " * 3,
                  "Sure, here is the answer."]

    def scores():
        if kind == "gpm":  # a preference model: GPO scores of the group
            return rm.rank(prompt, candidates).scores
        return rm.score([prompt] * len(candidates), candidates)

    rm.engine.prefix_reuse = False
    try:
        plain = scores()
    finally:
        rm.engine.prefix_reuse = True
    rm.engine.stats.reset()
    shared = scores()
    assert rm.engine.stats.prefix_groups == 1
    assert max(abs(a - b) for a, b in zip(plain, shared)) < TOL


def test_pair_pm_tournament_shares_the_context(models):
    rm = models("pair_pm")
    prompt = "Write a helpful poem about the weather in Paris today and tomorrow, please. " * 5
    candidates = [f"Answer {i}: " + "lovely beautiful stunning " * (i + 1) for i in range(6)]
    rm.engine.prefix_reuse = False
    try:
        plain = rm.rank(prompt, candidates, method="tournament")
    finally:
        rm.engine.prefix_reuse = True
    rm.engine.stats.reset()
    seen = []
    hidden_at = rm.engine.hidden_at
    rm.engine.hidden_at = lambda seqs, pos, **kw: (seen.extend(seqs), hidden_at(seqs, pos, **kw))[1]
    try:
        shared = rm.rank(prompt, candidates, method="tournament")
    finally:
        del rm.engine.hidden_at
    assert (shared.best, shared.worst) == (plain.best, plain.worst)
    assert max(abs(a - b) for a, b in zip(plain.scores, shared.scores)) < TOL
    st = rm.engine.stats
    # the context runs in the first round only (kept across the rounds' calls)
    assert st.calls == 3 and st.prefix_cache_hits == st.calls - 1
    context = min(common_prefix_len(seen[0], s) for s in seen)
    assert unique_token_floor(seen) <= st.tokens_processed <= st.tokens_floor - (st.calls - 1) * context
    assert not rm.engine._kept  # released after rank


def test_bpe_merge_across_the_boundary_falls_back(models):
    """The text of the prompt is a prefix of each sequence, but not its tokens: byte-level BPE merges the prompt's
    trailing characters with the continuation. The engine must share only the true token prefix."""
    rm = models("bt_llama3")
    tok = rm.tokenizer
    prompt_text = "hello wor"  # "wor" + "ld" -> "world" merges across the text boundary
    texts = [prompt_text + "ld is lovely", prompt_text + "ld, thanks", prompt_text + "k"]
    prompt_ids = tok.encode(prompt_text, add_special_tokens=False)
    seqs = [tok.encode(t, add_special_tokens=False) for t in texts]
    assert any(s[: len(prompt_ids)] != prompt_ids for s in seqs), "the probe must break the text prefix"
    positions = [[-1, 0] for _ in seqs]
    plain = rm.engine.hidden_at(seqs, positions, prefix_reuse=False)
    shared = rm.engine.hidden_at(seqs, positions)
    assert _max_diff(plain, shared) < TOL
    # with a long common head the group forms, and its prefix stops before the merged token
    head = tok.encode("Please explain the digital age of books and reading today. " * 6, add_special_tokens=False)
    long_seqs = [head + s for s in seqs]
    groups = plan_groups(long_seqs)
    assert len(groups) == 1 and groups[0].prefix_len == min(common_prefix_len(long_seqs[0], s) for s in long_seqs)
    assert groups[0].prefix_len < len(head) + len(prompt_ids)
    plain = rm.engine.hidden_at(long_seqs, positions, prefix_reuse=False)
    shared = rm.engine.hidden_at(long_seqs, positions)
    assert _max_diff(plain, shared) < TOL


def test_no_shared_prefix_runs_plain(models):
    engine = models("bt_llama3").engine
    rng = random.Random(3)
    seqs = [[rng.randrange(300) for _ in range(rng.randint(5, 60))] for _ in range(7)]
    engine.stats.reset()
    out = engine.hidden_at(seqs, [[-1]] * len(seqs))
    assert engine.stats.prefix_groups == 0 and len(out) == 7


def test_mistral_sliding_window_guard(models):
    rm = models("bt")  # Mistral layout, sliding_window=4096
    engine = rm.engine
    _, seqs = _groups_of_ids(seed=5)
    engine.stats.reset()
    engine.hidden_at(seqs, [[-1]] * len(seqs))
    assert engine.stats.prefix_groups > 0
    window = engine.config.sliding_window
    try:
        engine.config.sliding_window = 40  # shorter than the sequences: reuse must be refused
        engine.stats.reset()
        engine.hidden_at(seqs, [[-1]] * len(seqs))
        assert engine.stats.prefix_groups == 0
    finally:
        engine.config.sliding_window = window


def test_budget_batching_returns_callers_order(models):
    rm = models("bt_llama3")
    engine = ScoringEngine(rm.model.base_model, rm.engine.pad_token_id, token_budget=64, prefix_reuse=False)
    rng = random.Random(1)
    seqs = [[rng.randrange(300) for _ in range(n)] for n in (5, 40, 12, 33, 3, 60, 21, 8)]
    batches = engine.batches([len(s) for s in seqs])
    assert sorted(i for b in batches for i in b) == list(range(len(seqs)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(len(seqs[i]) for i in b) <= 64
    for ragged in (False, True):  # padded micro-batches as planned; or end to end, at most 64 tokens a forward
        engine.ragged = ragged
        engine.stats.reset()
        out = engine.hidden_at(seqs, [[-1]] * len(seqs))
        forwards, padded = engine.stats.forwards, engine.stats.tokens_padded
        one_by_one = [engine.hidden_at([s], [[-1]])[0] for s in seqs]
        assert _max_diff(out, one_by_one) < TOL
        if not ragged:
            assert forwards == len(batches)
        else:
            assert padded == sum(map(len, seqs)) and -(-padded // 64) <= forwards < len(batches)


def test_auto_budget_on_cpu_comes_from_free_memory(models, monkeypatch):
    """4096 tokens when RAM is plentiful; with little free RAM, what a quarter of it holds at the model's
    activation bytes per token (``psutil`` reports the memory; the model is real)."""
    import psutil

    from rmplugins.engine import activation_bytes_per_token

    engine = models("bt_llama3").engine
    assert engine.token_budget is None and engine.budget() == 4096
    per_token = activation_bytes_per_token(engine.config, torch.float32)
    real = psutil.virtual_memory

    def scarce():
        return real()._replace(available=per_token * 3000)  # a quarter holds 750 tokens

    monkeypatch.setattr(psutil, "virtual_memory", scarce)
    assert engine.budget() == 512  # 750 rounded down to a multiple of 256
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real()._replace(available=1000))
    assert engine.budget() == 256  # never below the minimum


class OutOfMemoryAbove(torch.nn.Module):
    """A real backbone that raises CUDA's out-of-memory error when a forward holds more than ``limit`` tokens,
    as a device would: it exercises the engine's recovery, not a mocked model."""

    def __init__(self, backbone, limit):
        super().__init__()
        self.inner, self.limit, self.config = backbone, limit, backbone.config
        self.seen = []

    def forward(self, input_ids, **kwargs):
        self.seen.append(input_ids.numel())
        if input_ids.numel() > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated above {self.limit} tokens)")
        return self.inner(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize("reuse", [False, True])
def test_out_of_memory_splits_and_retries(models, caplog, monkeypatch, reuse):
    monkeypatch.setattr("rmplugins.engine.budget.CPU_FORWARD_OVERHEAD", 10**6)  # fill micro-batches up to the budget
    rm = models("bt_llama3")
    _, seqs = _groups_of_ids(seed=2)
    positions = [[-1]] * len(seqs)
    reference = rm.engine.hidden_at(seqs, positions, prefix_reuse=False)
    wrapper = OutOfMemoryAbove(rm.model.base_model, limit=150)
    engine = ScoringEngine(wrapper, rm.engine.pad_token_id, token_budget=4096, prefix_reuse=reuse)
    with caplog.at_level(logging.WARNING, logger="rmplugins"):
        out = engine.hidden_at(seqs, positions)
    assert _max_diff(reference, out) < TOL
    assert engine.stats.oom_splits > 0 and "out of memory" in caplog.text
    assert engine.budget() < 4096  # lowered for the next calls
    engine.hidden_at(seqs, positions)  # later calls start below the limit more often
    assert all(n <= 150 for n in wrapper.seen[-3:])


def test_out_of_memory_on_one_sequence_is_a_clear_error(models):
    rm = models("bt_llama3")
    engine = ScoringEngine(OutOfMemoryAbove(rm.model.base_model, limit=10), rm.engine.pad_token_id)
    with pytest.raises(torch.OutOfMemoryError, match="max_length"):
        engine.hidden_at([list(range(20)), list(range(30, 45))], [[-1], [-1]])


def test_token_accounting(models):
    engine = models("bt_llama3").engine
    _, seqs = _groups_of_ids(seed=4, prompts=2, per_prompt=3)
    engine.stats.reset()
    engine.hidden_at(seqs + [seqs[0]], [[-1]] * (len(seqs) + 1))
    st = engine.stats
    requested = sum(len(s) for s in seqs) + len(seqs[0])
    assert st.tokens_requested == requested
    assert st.tokens_floor == unique_token_floor(seqs)
    assert st.tokens_floor <= st.tokens_processed <= st.tokens_padded
    assert st.tokens_processed < requested
    # one forward end to end with the engine attention, else a prefix pass and a suffix batch
    assert st.sequences == len(seqs) + 1 and st.calls == 1 and st.forwards == (1 if engine.ragged else 2)
    engine.hidden_at(seqs, [[-1]] * len(seqs), prefix_reuse=False)
    assert st.calls == 2 and st.tokens_processed > requested
    st.reset()
    assert st.as_dict() == {k: 0 for k in st.as_dict()}


def test_bidirectional_backbone_only_batches(models):
    rm = models("pairrm")
    assert rm.engine.causal is False and rm.engine.prefix_reuse is False
    rm.engine.stats.reset()
    rm.rank("Which city is the capital of France?", ["Paris.", "Lyon.", "It is Paris, of course.", "Paris."])
    assert rm.engine.stats.prefix_groups == 0 and rm.engine.stats.tokens_floor == rm.engine.stats.tokens_processed


def test_plan_groups_picks_the_cheapest_partition():
    header = list(range(1000, 1006))  # a short chat header shared by every prompt
    p1, p2 = header + list(range(100)), header + list(range(200, 300))
    seqs = [p1 + [1, 2, 3], p1 + [4, 5], p2 + [6], p2 + [7, 8], p2 + [9], [5, 5, 5]]
    groups = plan_groups(seqs)
    by_members = {tuple(sorted(g.members)): g.prefix_len for g in groups}
    assert by_members == {(0, 1): len(p1), (2, 3, 4): len(p2), (5,): 0}
    assert unique_token_floor(seqs) == 6 + 100 + 100 + 3 + 2 + 1 + 2 + 1 + 3
    assert plan_groups([]) == []
    # a sequence equal to the common prefix leaves every member at least one token of its own
    groups = plan_groups([p1, p1 + [1], p1 + [2]])
    assert len(groups) == 1 and groups[0].prefix_len == len(p1) - 1


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_last_layer_runs_only_where_read_and_is_restored(models, kind):
    """The last layer's query/output projections and MLP run only at the read positions; the hidden states
    there are those of the full computation, on both the plain and the prefix-reuse paths."""
    engine = models(kind).engine
    modules = engine.worker.read_modules
    assert modules is not None
    heads, seqs = _groups_of_ids(seed=3)
    positions = [[-1, 5] for _ in seqs]
    seen = []  # shapes reaching the MLP's inner projection: only the read rows, flattened
    hook = modules[2].down_proj.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        fast_plain = engine.hidden_at(seqs, positions, prefix_reuse=False)
        n_plain = len(seen)
        fast_shared = engine.hidden_at(seqs, positions)
    finally:
        hook.remove()
    assert all(len(shape) == 2 for shape in seen)  # never a [batch, width, ...] activation
    assert sum(shape[0] for shape in seen[:n_plain]) == 2 * len(seqs)  # exactly the read positions
    # with prefix reuse, position 5 lies in each group's shared prefix: computed once per group
    assert sum(shape[0] for shape in seen[n_plain:]) == len(heads) + len(seqs)
    assert all("forward" not in m.__dict__ for m in modules)  # restored
    engine.worker.read_modules = None
    try:
        full = engine.hidden_at(seqs, positions, prefix_reuse=False)
    finally:
        engine.worker.read_modules = modules
    assert _max_diff(full, fast_plain) < TOL
    assert _max_diff(full, fast_shared) < TOL


@pytest.mark.parametrize("engine_attention", [True, False])
def test_kept_prefixes_serve_later_calls_exactly(models, engine_attention):
    engine = models("armorm").engine
    heads, seqs = _groups_of_ids(seed=5)
    first, second = seqs[0::2], seqs[1::2]  # the same three prompts, other continuations
    positions = [[-1, 3] for _ in second]
    reference = engine.hidden_at(second, positions, prefix_reuse=False)
    engine.engine_attention = engine_attention
    try:
        with engine.keep_prefixes():
            engine.hidden_at(first, [[-1, 3]] * len(first))
            kept = list(engine._kept)
            assert len(kept) == 3 and all(len(k) >= len(h) for k, h in zip(sorted(kept), sorted(map(tuple, heads))))
            engine.stats.reset()
            out = engine.hidden_at(second, positions)
            assert engine.stats.prefix_cache_hits == 3
            # one forward of the continuations; with the engine attention end to end, without padding
            assert engine.stats.forwards == 1
            assert (engine.stats.tokens_padded == engine.stats.tokens_processed) == engine_attention
            # only what follows each kept prefix runs
            assert engine.stats.tokens_processed == sum(len(s) - len(k) for s in second for k in kept
                                                        if tuple(s[: len(k)]) == k)
            # a position inside a kept prefix that was not read when it ran: that prefix runs again
            engine.stats.reset()
            again = engine.hidden_at(second, [[-1, 7] for _ in second])
            assert engine.stats.prefix_cache_hits == 0
        assert not engine._kept
    finally:
        engine.engine_attention = True
    assert _max_diff(reference, out) < TOL
    assert _max_diff(engine.hidden_at(second, [[-1, 7]] * len(second), prefix_reuse=False), again) < TOL


def test_kept_prefixes_are_bounded_and_released_by_the_outermost_block(models, monkeypatch):
    monkeypatch.setattr("rmplugins.engine.budget.KEEP_FACTOR", 1)
    engine = models("bt_llama3").engine
    _, seqs = _groups_of_ids(seed=6, prompts=4)
    engine.token_budget = 128
    try:
        with engine.keep_prefixes():
            with engine.keep_prefixes():
                engine.hidden_at(seqs, [[-1]] * len(seqs))
            assert 1 <= len(engine._kept) < 4  # the inner exit keeps them; the bound dropped the oldest
            assert sum(len(t) for t in engine._kept) <= 128 or len(engine._kept) == 1
        assert not engine._kept
    finally:
        engine.token_budget = None


@pytest.mark.parametrize("engine_attention", [True, False])
@pytest.mark.parametrize("kind", ["bt_llama3", "armorm", "gpm"])
def test_prompt_cache_runs_each_prompt_once_across_calls(models, kind, engine_attention):
    """A server's n samples of a prompt arrive one call at a time: with the prompt cache the first runs whole and
    is kept, each later one runs only from where it stops agreeing with it (exact token accounting), and every
    hidden state equals the one-call result."""
    engine = models(kind).engine
    _, seqs = _groups_of_ids(seed=11, prompts=3, per_prompt=4)
    positions = [[-1, 5] for _ in seqs]  # a read position inside the prompt too (ArmoRM's gate, GPM's prompt end)
    reference = engine.hidden_at(seqs, positions, prefix_reuse=False)
    engine.engine_attention = engine_attention
    engine.prompt_cache_tokens = 10_000
    try:
        engine.stats.reset()
        got = [engine.hidden_at([s], [p])[0] for s, p in zip(seqs, positions)]
        firsts = {tuple(s[:20]): s for s in reversed(seqs)}  # the first sample of each prompt
        expected = 0
        for s in seqs:
            first = firsts[tuple(s[:20])]
            expected += len(s) if first is s else len(s) - min(common_prefix_len(s, first), len(s) - 1)
        assert engine.stats.tokens_processed == expected
        assert engine.stats.prefix_cache_hits == len(seqs) - 3
        assert engine.stats.tokens_processed < 0.6 * sum(len(s) for s in seqs)
        assert engine.prompt_cache_info() == {"limit_tokens": 10_000, "entries": 3,
                                              "held_tokens": sum(len(s) for s in firsts.values())}
        # all of them again in one call: each prompt's group starts from the kept prompt, so less than the call's
        # own floor (each prompt once) runs
        engine.stats.reset()
        again = engine.hidden_at(seqs, positions)
        assert engine.stats.prefix_cache_hits == 3
        assert engine.stats.tokens_processed < engine.stats.tokens_floor
    finally:
        engine.prompt_cache_tokens = 0
        engine.engine_attention = True
    assert not engine._kept  # turning it off frees it
    assert _max_diff(reference, got) < TOL
    assert _max_diff(reference, again) < TOL


def test_a_kept_template_opening_does_not_cut_a_calls_shared_prompt(models):
    """A kept sequence that agrees with a new group only on its first block (a chat template's opening shared by
    every prompt) must not replace the group's own shared prefix: the call processes no more tokens than without
    the prompt cache (it once processed 2-3 times more, ranking pair-PM groups on the server)."""
    engine = models("bt_llama3").engine
    heads, seqs = _groups_of_ids(seed=13, prompts=2, per_prompt=6)
    opening = heads[0][:20]
    other = opening + heads[1][20:]  # another prompt behind the same 20-token opening
    group = [other + s[len(heads[1]):] for s in seqs[6:]]
    positions = [[-1] for _ in group]
    engine.stats.reset()
    reference = engine.hidden_at(group, positions)
    without = engine.stats.tokens_processed
    engine.prompt_cache_tokens = 10_000
    try:
        engine.hidden_at(seqs[:1], [[-1]])  # kept: agrees with the group on the opening only
        engine.stats.reset()
        got = engine.hidden_at(group, positions)
        assert engine.stats.tokens_processed <= without
    finally:
        engine.prompt_cache_tokens = 0
    assert _max_diff(reference, got) < TOL


def test_prompt_cache_is_bounded_least_recently_used_first(models):
    engine = models("bt_llama3").engine
    heads, seqs = _groups_of_ids(seed=12, prompts=3, per_prompt=2)
    a, b, c = seqs[0], seqs[2], seqs[4]
    engine.prompt_cache_tokens = len(a) + max(len(b), len(c))  # room for a and one other
    try:
        for s in (a, b, a, c):  # a is used again after b: b is the least recently used when c arrives
            engine.hidden_at([s], [[-1]])
        assert set(engine._kept) == {tuple(a), tuple(c)}
        assert engine._kept.tokens == len(a) + len(c) <= engine.prompt_cache_tokens
        engine.stats.reset()
        engine.hidden_at([seqs[1]], [[-1]])  # a's prompt: still kept
        assert engine.stats.prefix_cache_hits == 1 and engine.stats.tokens_processed < len(seqs[1]) - 30
        engine.stats.reset()
        engine.hidden_at([seqs[3]], [[-1]])  # b's prompt: dropped, so it runs whole
        assert engine.stats.prefix_cache_hits == 0 and engine.stats.tokens_processed == len(seqs[3])
    finally:
        engine.prompt_cache_tokens = 0


def test_deterministic_scoring_never_uses_the_prompt_cache(tiny):
    """A deterministic model's numbers depend on the row alone, never on what ran before it."""
    from rmplugins import load_reward_model

    rm = load_reward_model(tiny("armorm"), device="cpu", deterministic=True)
    fresh = load_reward_model(tiny("armorm"), device="cpu", deterministic=True)
    prompts = ["Explain the weather in Paris today, please, in some detail."] * 3
    completions = ["It is sunny.", "It rains a lot in Paris today.", "Cloudy."]
    rm.engine.prompt_cache_tokens = 10_000
    for p, c in zip(prompts, completions):
        rm.score([p], [c])
    rm.engine.stats.reset()
    assert rm.score(prompts, completions) == fresh.score(prompts, completions)
    assert rm.engine.stats.prefix_cache_hits == 0 and not rm.engine._kept


def test_a_call_uses_only_the_cores_other_processes_leave_free(models, monkeypatch, tmp_path):
    """Beside a busy process a barrier-bound forward with a thread per core waits for the descheduled thread at
    every parallel region (8x slower, issue 28): each call runs with the cores other runnable threads leave free,
    and the configured number is back afterwards."""
    from rmplugins.engine import threads

    assert threads.fitting_threads(2, 2, 1) == 1 and threads.fitting_threads(2, 2, 0) == 2
    assert threads.fitting_threads(4, 8, 2) == 4 and threads.fitting_threads(4, 4, 3) == 1
    assert threads.fitting_threads(2, 2, None) == 2  # no /proc/loadavg: as configured
    # on more cores the counts lie on a ladder (each count is a compiled kernel of its own): all of the cores beside
    # one busy process, never more than a quarter fewer than are free
    assert threads.thread_counts(16) == [16, 15, 11, 8, 6, 4, 3, 2, 1] and threads.thread_counts(2) == [2, 1]
    assert threads.thread_counts(5) == [5, 4, 3, 2, 1] and threads.thread_counts(1) == [1]
    for configured in range(1, 129):
        ladder = threads.thread_counts(configured)
        assert ladder[0] == configured and ladder[-1] == 1 and len(ladder) <= 16
        for busy in range(configured):
            free = configured - busy
            n = threads.fitting_threads(configured, configured, busy)
            assert n in ladder and n <= free and (n >= 0.75 * free or n == free - 1 or free <= 2), (configured, busy)
    assert threads.fitting_threads(16, 16, 1) == 15 and threads.fitting_threads(16, 16, 3) == 11
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.31 1.02 0.98 5/412 98765\n")
    tasks = tmp_path / "task"  # /proc/self/task: this process's threads, two runnable (one named with ") S")
    for tid, stat in (("101", "101 (python) R 1 2"), ("102", "102 (pt_main ) S x) R 1 2"), ("103", "103 (tok) S 1 2")):
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "stat").write_text(stat)
    assert threads.runnable_here(str(tasks)) == 2
    assert threads.runnable_elsewhere(str(loadavg), str(tasks)) == 3  # 5 runnable, 2 of them ours
    assert threads.runnable_elsewhere(str(tmp_path / "missing"), str(tasks)) is None

    # our own busy threads (OpenMP workers spin after every parallel region) are not another process's load: on a
    # quiet machine they halved the threads of every other forward (7.8 s against 5.2 s for a call)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        assert threads.runnable_here() >= 2  # the reader and the spinner: 'R' whether on a core or waiting for one
    finally:
        stop.set()
        spinner.join()

    with monkeypatch.context() as m:
        m.setattr(threads, "cores", lambda: 2)
        m.setattr(threads.os, "cpu_count", lambda: 64)
        assert not threads.whole_machine()  # a container's cpuset on a larger host
        m.setattr(threads.os, "cpu_count", lambda: 2)
        assert threads.whole_machine()

    engine = models("bt_llama3").engine
    seen = []
    hook = engine.backbone.layers[0].register_forward_hook(lambda *args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    # torch's own setter: a vLLM CPU worker started in this test process earlier replaced it (checked below)
    monkeypatch.setattr(torch, "set_num_threads", torch._C.set_num_threads)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(threads, "whole_machine", lambda: True)
    monkeypatch.setattr(threads, "runnable_elsewhere", lambda: 1)
    torch.set_num_threads(2)
    try:
        engine.hidden_at([[5, 6, 7, 8]], [[-1]])
        assert seen == [1] and torch.get_num_threads() == 2  # one forward here
        engine.fit_threads = False
        engine.hidden_at([[5, 6, 7, 9]], [[-1]])
        assert seen == [1, 2]
        engine.fit_threads = True  # load that comes during a forward: decided again before each layer
        loads = iter([0, 1, 0])  # on entry, before layer 0, before layer 1 (of 2)
        monkeypatch.setattr(threads, "runnable_elsewhere", lambda: next(loads, 0))
        per_layer = []
        hooks = [layer.register_forward_hook(lambda *args: per_layer.append(torch.get_num_threads()))
                 for layer in engine.backbone.layers]
        try:
            engine.hidden_at([[5, 6, 7, 11]], [[-1]])
        finally:
            for h in hooks:
                h.remove()
        assert per_layer == [1, 2] and torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "runnable_elsewhere", lambda: 1)
        monkeypatch.setattr(threads, "whole_machine", lambda: False)  # pinned to 2 cores of a 64-core host: the
        engine.hidden_at([[5, 6, 7, 10]], [[-1]])  # machine-wide count is not about ours
        assert seen[-1] == 2
        # vLLM's CPU worker, once it has bound its threads to cores, replaces torch.set_num_threads with a no-op that
        # warns (vllm/v1/worker/cpu_worker.py): the count is vLLM's there, and the engine leaves it alone, warm-up
        # included, instead of a warning for every change and a fitting that never happens
        monkeypatch.setattr(threads, "whole_machine", lambda: True)
        refused = []
        monkeypatch.setattr(torch, "set_num_threads", refused.append)
        engine.hidden_at([[5, 6, 7, 12]], [[-1]])
        engine.warm_up()
        assert refused == [] and seen[-1] == 2 and torch.get_num_threads() == 2
    finally:
        engine.fit_threads = True
        hook.remove()
        torch._C.set_num_threads(before)


def test_the_cache_is_found_by_the_name_the_installed_transformers_gives_it(models):
    """transformers renamed a forward's ``past_key_values`` to ``cache`` (5.2x): the engine hands a cache over, and
    takes one back, by the name the backbone has (a cache passed under the other name was lost: a crash on 5.25)."""
    from transformers import DynamicCache
    from transformers.modeling_outputs import BaseModelOutputWithPast

    from rmplugins.engine.cache_argument import cache_keyword, given_cache, output_cache

    backbone = models("bt_llama3").engine.backbone
    new = "cache" in BaseModelOutputWithPast.__dataclass_fields__
    assert cache_keyword(backbone) == ("cache" if new else "past_key_values")
    assert cache_keyword(OutOfMemoryAbove(backbone, 10)) == cache_keyword(backbone)  # a wrapper taking **kwargs
    with torch.inference_mode():
        out = backbone(input_ids=torch.tensor([[3, 4, 5]]), use_cache=True)
    assert output_cache(out).get_seq_length() == 3
    cache, kwargs = DynamicCache(), {"cache": None, "other": 1}
    assert given_cache(cache, dict(kwargs)) is cache
    kwargs["cache"] = cache
    assert given_cache(None, kwargs) is cache and kwargs == {"other": 1}
