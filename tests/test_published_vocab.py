"""The published vocabularies: Meta's Llama-3 tiktoken ranks (``llama-models``) and Mistral-7B-Instruct-v0.2's
SentencePiece model (``mistral-common``), converted by transformers into the tiny checkpoints'
``*_real_vocab`` layouts (``rmplugins.testing``). The parity modules run every family on them too; here: the ids the
reference code hard-codes, and the engine on real text (BPE merges across the prompt/response boundary, prompts of
thousands of tokens) against one sequence per forward.
"""

import pytest
import torch
from reference_helpers import ATOL, assert_close
from test_determinism import FAST_MODE_BOUND
from test_parity_bt import CardPipeline

from rmplugins import load_reward_model
from rmplugins.inputs import to_conversation


@pytest.fixture(scope="module")
def real(tiny):
    cache = {}

    def get(kind, **options):
        if kind not in cache:
            cache[kind] = load_reward_model(tiny(kind), dtype="float32", device="cpu", **options)
        return cache[kind]
    return get


def test_llama3_ids_the_reference_code_hard_codes(real):
    armorm = real("armorm_real_vocab")
    tok = armorm.tokenizer
    assert len(tok) == 128256
    assert tok("Hello world, how are you?", add_special_tokens=False)["input_ids"] == [9906, 1917, 11, 1268, 527,
                                                                                         499, 30]
    assert [tok.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                   "<|eot_id|>")] == [128000, 128006, 128007, 128009]
    # ArmoRM's hub code finds the gating position with these literal ids
    assert list(armorm.gating_pattern) == [128009, 128006, 78191, 128007, 271]
    pair_pm = real("pair_pm_real_vocab")
    assert (pair_pm.token_a, pair_pm.token_b) == (32, 33)  # RLHFlow's card reads the logits of "A" and "B"
    ids = pair_pm.encode(pair_pm.context_text(({"role": "user", "content": "Hi"},)), "x", "y")
    assert ids[0] == 128006 and 128000 not in ids  # the card removes the BOS text and adds none


def test_mistral_v1_ids_and_rm_mistral_pad(real):
    bt = real("bt_real_vocab")
    tok = bt.tokenizer
    assert tok("Hello world [INST]")["input_ids"] == [1, 22557, 1526, 733, 16289, 28793]
    assert tok.pad_token == "[PAD]" and tok.pad_token_id == 32000 and len(tok) == 32001
    assert bt.model.config.pad_token_id == 32000 and bt.model.config.vocab_size == 32001


def test_gpm_llama31_template_has_the_date_system_block(real):
    gpm = real("gpm_real_vocab")
    text = gpm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
                    "2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi"
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    with_system = gpm.tokenizer.apply_chat_template([{"role": "system", "content": " Be brief. "},
                                                     {"role": "user", "content": "Hi"}], tokenize=False)
    assert "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|>" in with_system


# Pairs of candidates whose texts share a prefix that the tokenizers cut differently: the shared token prefix of
# the two rows is shorter than their shared text (" 42" vs " 420", "Sun" vs "Sunday", "don" vs "don't", ...).
MERGING = [("The answer is 42", "The answer is 420."), ("Sun", "Sunday is sunny"), ("I don", "I don't know"),
           ("12", "123 and 1234"), ("Hello", "Hello, world"), ("un", "unbelievable"), ("cat", "category"),
           ("book", "bookshelf"), ("rain", "rainbow"), ("play", "playground")]


@pytest.mark.parametrize("kind", ["bt_llama3_real_vocab", "bt_real_vocab"])
def test_engine_on_text_where_bpe_merges_cross_the_shared_prefix(real, tiny, kind):
    rm = real(kind)
    ref = CardPipeline(tiny(kind), system_role=kind.startswith("bt_llama3"))
    prompt = "Finish the sentence."
    shorter = 0
    for a, b in MERGING:
        rows = [rm.encode(list(to_conversation(prompt, c).messages)) for c in (a, b)]
        texts = [rm.tokenizer.decode(r) for r in rows]
        tokens = next(k for k, (x, y) in enumerate(zip(*rows)) if x != y)
        chars = next(k for k, (x, y) in enumerate(zip(*texts)) if x != y)
        shorter += len(rm.tokenizer.decode(rows[0][:tokens])) < chars  # the merge reaches back before the split
    assert shorter >= 3, "the cases must include token prefixes shorter than the text prefixes"
    cands = [c for pair in MERGING for c in pair]
    got = rm.score([prompt] * len(cands), cands)  # one call: the engine shares what the rows share
    want = [ref.reward(list(to_conversation(prompt, c).messages)) for c in cands]
    assert_close(got, want, ATOL, f"{kind} merged-prefix group")


@pytest.mark.parametrize("kind", ["armorm_real_vocab", "bt_llama3_real_vocab"])
def test_engine_on_prompts_of_thousands_of_tokens(real, tiny, kind):
    """2-4k-token prompts (real English-like text on the 128k vocabulary), four candidates each, scored in one
    call with the prompt shared, against each sequence alone through the model's own forward."""
    rm = real(kind)
    words = ("the river crossed the old stone bridge while merchants argued about the price of salt and wool, "
             "and children counted boats drifting towards the harbour lights; ").split()
    prompts = [" ".join(words[k % len(words)] for k in range(n)) for n in (1900, 3100)]
    cands = ["Yes.", "It is about trade and the river.", "I cannot tell from this text.", "Salt, wool and boats."]
    ps = [p for p in prompts for _ in cands]
    cs = [c for _ in prompts for c in cands]
    lengths = [len(rm.encode(list(to_conversation(p, c).messages))) for p, c in zip(ps, cs)]
    assert 2000 <= min(lengths) and max(lengths) <= 4200, lengths
    got = rm.score(ps, cs)
    alone = load_reward_model(tiny(kind), dtype="float32", device="cpu", deterministic=True)
    want = alone.score(ps, cs)  # each row alone: the engine's batching and prefix sharing taken out
    # the README's stated bound for the default (batched) mode against a row scored alone
    assert all(abs(g - w) <= FAST_MODE_BOUND * (1 + abs(w)) for g, w in zip(got, want)), (got, want)
    if kind == "bt_llama3_real_vocab":  # and the card's pipeline on one of them
        ref = CardPipeline(tiny(kind), system_role=True)
        assert_close(want[:1], [ref.reward(list(to_conversation(ps[0], cs[0]).messages))], ATOL, "card, long")
    assert len({round(x, 4) for x in got}) == len(got)
    assert torch.isfinite(torch.tensor(got)).all()
