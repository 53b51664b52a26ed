"""Bradley-Terry parity: the library against seed 003's text-classification pipeline, one sample at a time.

Reference (RM-Mistral-7B card): ``apply_chat_template(chat, tokenize=False, add_generation_prompt=False)`` with
the BOS string removed, then ``pipeline("sentiment-analysis", function_to_apply="none", batch_size=1)``; the
reward is the single logit. Run on the tiny RM-Mistral layout (``bt``: Mistral-Instruct template that rejects
system messages, separate [PAD]) and the FsfairX-LLaMA3 layout (``bt_llama3``: Llama-3 template), and on the
backbones newer reward models ship on, which the engine runs through the model's own attention (its generic path):
Skywork-Reward-V2-Qwen3 (``bt_qwen3``: q/k norms, the Qwen3 template with its <think> block), a Qwen2.5 RM
(``bt_qwen25``: default system message, no BOS), Skywork-Reward-Gemma-2 (``bt_gemma2``: soft-capping, alternating
128-token sliding-window layers, no system role) and Skywork-Reward-V2-Llama-3.2 (``bt_llama32``: llama3 RoPE
scaling, the Llama-3.1/3.2 vocabulary and date-block template).
"""

from __future__ import annotations

import json
from pathlib import Path

import engines
import pytest
import torch
import transformers
from engines import both
from reference_helpers import (
    ATOL,
    CANDIDATES,
    MULTI_SYS,
    SINGLE,
    assert_close,
    assert_differs,
    completion_text,
    conv,
    fold_system,
    full_messages,
    pairwise_cases,
    pointwise_cases,
    sigmoid,
)
from transformers import AutoTokenizer

from rmplugins import load_reward_model

KINDS = ["bt", "bt_llama3", "bt_real_vocab", "bt_llama3_real_vocab",  # tiny and published vocabularies
         "bt_qwen3", "bt_qwen25", "bt_gemma2", "bt_llama32"]  # other backbones
SYSTEM_ROLE = {"bt_llama3", "bt_llama3_real_vocab", "bt_qwen3", "bt_qwen25", "bt_llama32"}  # not Mistral, Gemma


class CardPipeline:
    """Seed 003, verbatim in spirit: render, drop BOS, text-classification pipeline, batch size 1."""

    def __init__(self, path: str, system_role: bool):
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # Skywork-Reward-Gemma-2's card loads with flash_attention_2, which soft-caps the attention logits; on CPU
        # eager does the same, while transformers' default SDPA path silently drops the cap
        config = json.loads((Path(path) / "config.json").read_text())
        attention = {"attn_implementation": "eager"} if config.get("attn_logit_softcapping") else {}
        self.pipe = transformers.pipeline("text-classification", model=path, tokenizer=self.tokenizer,
                                          device="cpu", dtype=torch.float32, model_kwargs=attention)
        self.system_role = system_role
        self._cache: dict[str, float] = {}
        # Batch size 1 never pads. The tiny FsfairX layout sets pad_token_id = eos = <|eot_id|>, which ends every
        # Llama-3 turn, so transformers' pooling ("rightmost token != pad") would read the token *before* the final
        # <|eot_id|>. The real checkpoints' pad id never occurs in chat text (and the RLHFlow training code pooled
        # at the last real token), so the reference drops the pad id: the reward is the logit at the last token.
        self.pad_collides = self.pipe.model.config.pad_token_id == self.tokenizer.eos_token_id
        if self.pad_collides:
            self.pipe.model.config.pad_token_id = None

    def text(self, chat: list[dict]) -> str:
        if not self.system_role:  # Mistral-Instruct raises on a system message: the documented fold
            chat = fold_system(chat)
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
        bos = self.tokenizer.bos_token  # Qwen has none: nothing to strip, and its tokenizer adds none
        return text.replace(bos, "") if bos else text

    def reward(self, chat: list[dict]) -> float:
        text = self.text(chat)
        if text not in self._cache:  # one pipeline call per distinct text keeps the module fast
            out = self.pipe([text], function_to_apply="none", top_k=None, batch_size=1)
            self._cache[text] = float(out[0][0]["score"])
        return self._cache[text]


@pytest.fixture(scope="module", params=both(KINDS))
def setup(request, tiny, references):
    kind, engine = request.param
    path = tiny(kind)
    rm = engines.load(path, engine)
    yield kind, rm, references(kind, lambda: CardPipeline(path, system_role=kind in SYSTEM_ROLE))
    engines.close(rm)


def test_kind_detected(setup):
    kind, rm, _ = setup
    assert rm.kind == "bt"


def test_score_matches_card_pipeline(setup):
    _, rm, ref = setup
    prompts, completions = pointwise_cases()
    got = rm.score(prompts, completions)
    want = [ref.reward(full_messages(p, c)) for p, c in zip(prompts, completions)]
    assert_close(got, want, ATOL, "bt score")
    # non-vacuous: the rewards differ across responses by far more than the tolerance
    assert_differs(want[0], want[1], ATOL, "rewards of two responses")


def test_bos_removal_matters(setup):
    """The card strips the BOS string so the tokenizer adds exactly one; keeping it changes the reward."""
    kind, rm, ref = setup
    chat = full_messages(SINGLE, CANDIDATES[0])
    kept = ref.tokenizer.apply_chat_template(chat, tokenize=False)
    if ref.tokenizer.bos_token is None:  # Qwen: no BOS in the text or from the tokenizer
        assert ref.tokenizer(kept)["input_ids"] == ref.tokenizer(kept, add_special_tokens=False)["input_ids"]
        assert_close(rm.score([SINGLE], [CANDIDATES[0]]), [ref.reward(chat)], ATOL, "bt single")
        return
    with_two_bos = float(ref.pipe([kept], function_to_apply="none", top_k=None)[0][0]["score"])
    assert_differs(with_two_bos, ref.reward(chat), ATOL, "one vs two BOS")
    assert_close(rm.score([SINGLE], [CANDIDATES[0]]), [ref.reward(chat)], ATOL, "bt single")


def test_pad_equals_eos_pooling_would_differ(setup):
    """Documents why the reference drops a pad id equal to eos: with it, transformers pools one token early.
    FsfairX's layout pads with <|eot_id|> (the collision); RM-Mistral's has its own [PAD]: rmplugins reads the last
    token in both."""
    kind, rm, ref = setup
    assert ref.pad_collides == (kind in ("bt_llama3", "bt_llama3_real_vocab"))
    chat = full_messages(SINGLE, CANDIDATES[0])
    ids = ref.tokenizer(ref.text(chat), return_tensors="pt")["input_ids"]
    model = ref.pipe.model
    with torch.no_grad():
        per_token = model.score(model.model(ids).last_hidden_state)[0, :, 0]
    assert_close(rm.score([SINGLE], [CANDIDATES[0]]), [per_token[-1].item()], ATOL, "last token")
    if ref.pad_collides:
        assert_differs(per_token[-1].item(), per_token[-2].item(), ATOL, "last vs. second-to-last token")


def test_standard_and_conversational_forms_agree(setup):
    _, rm, _ = setup
    prompts = [SINGLE, MULTI_SYS]
    assert_close(rm.score(prompts, [CANDIDATES[1], CANDIDATES[2]]),
                 rm.score(prompts, [conv(CANDIDATES[1]), conv(CANDIDATES[2])]), 1e-6, "forms")


def test_compare_is_sigmoid_of_reward_gap(setup):
    _, rm, ref = setup
    prompts, a, b = pairwise_cases()
    got = rm.compare(prompts, a, b)
    want = [sigmoid(ref.reward(full_messages(p, x)) - ref.reward(full_messages(p, y)))
            for p, x, y in zip(prompts, a, b)]
    assert_close(got, want, ATOL, "bt compare")
    assert all(0.0 < g < 1.0 for g in got)


def test_rank_uses_rewards(setup):
    _, rm, ref = setup
    for prompt in (SINGLE, MULTI_SYS):
        ranking = rm.rank(prompt, CANDIDATES)
        want = [ref.reward(full_messages(prompt, c)) for c in CANDIDATES]
        assert_close(ranking.scores, want, ATOL, "bt rank scores")
        assert ranking.best == max(range(len(want)), key=lambda i: want[i])
        assert ranking.worst == min(range(len(want)), key=lambda i: want[i])
        assert ranking.comparisons == 0


def test_empty_completion_is_scored(setup):
    _, rm, ref = setup
    got = rm.score([SINGLE, SINGLE], ["", conv("")])
    want = ref.reward(full_messages(SINGLE, ""))
    assert_close(got, [want, want], ATOL, "empty completion")
    assert completion_text(conv("")) == ""


@pytest.mark.parametrize("kind", KINDS)
def test_every_backbone_takes_the_engine_attention(kind, tiny):
    """The engine's own attention is parity-tested on every Bradley-Terry backbone (Llama-3.x, Mistral, Qwen2,
    Qwen3, Gemma-2 with its soft-capping and sliding layers: tests/test_attention.py); the numbers above are the
    card pipelines' through it."""
    rm = load_reward_model(tiny(kind), dtype="float32", device="cpu")
    assert rm.engine.engine_attention
    assert rm.engine.prefix_reuse


def test_gemma2_across_its_sliding_window(tiny):
    """A call holding a conversation longer than Gemma-2's window (128 tokens in the tiny layout) scores every
    sequence whole with the model's own sliding masks (prefix sharing would need a windowed cache: the engine turns
    it off); a call of shorter ones shares the prompt. Both equal the card pipeline."""
    path = tiny("bt_gemma2")
    rm = load_reward_model(path, dtype="float32", device="cpu")
    ref = CardPipeline(path, system_role=False)
    long_prompt = " ".join(["Please explain why the weather in Paris is good today, with an example."] * 12)
    short_prompt = "Write a short poem."
    prompts = [long_prompt] * 3 + [short_prompt] * 3
    completions = ["It is sunny and warm.", "Because of the wind from the west.", "I cannot say.",
                   "Roses are red.", "Here is a poem about books and reading.", "No."]
    lengths = [len(rm.encode(full_messages(p, c))) for p, c in zip(prompts, completions)]
    assert min(lengths[:3]) > 128 > max(lengths[3:])
    rm.engine.stats.reset()
    got = rm.score(prompts, completions)
    want = [ref.reward(full_messages(p, c)) for p, c in zip(prompts, completions)]
    assert_close(got, want, ATOL, "gemma-2 across the window")
    assert_differs(want[0], want[1], ATOL, "rewards of two long responses")
    assert rm.engine.stats.prefix_groups == 0 and rm.engine.stats.tokens_processed == sum(lengths)
    rm.engine.stats.reset()
    rm.score(prompts[3:], completions[3:])
    assert rm.engine.stats.prefix_groups == 1
    rm.engine.stats.reset()
    rm.score(prompts[:3], completions[:3])
    assert rm.engine.stats.prefix_groups == 0 and rm.engine.stats.tokens_processed == sum(lengths[:3])


class INFORMCard(transformers.LlamaPreTrainedModel):
    """INF-ORM-Llama3.1-70B's model card class, re-implemented: ``LlamaModel``, the score head
    ``Linear -> ReLU -> Linear``, the logit read at (first pad - 1), wrapping to the last token without a pad."""

    def __init__(self, config):
        super().__init__(config)
        self.model = transformers.LlamaModel(config)
        self.score = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, config.hidden_size), torch.nn.ReLU(),
                                         torch.nn.Linear(config.hidden_size, 1))
        self.post_init()

    def forward(self, input_ids):
        logits = self.score(self.model(input_ids).last_hidden_state)
        at = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % input_ids.shape[-1]
        return logits[torch.arange(input_ids.shape[0]), at]


def test_inform_custom_head_matches_its_card(tiny):
    """The card: ``apply_chat_template(conv, tokenize=True)`` (the template's BOS, none added), the card class,
    ``logits[0][0]``. The head is found from the tensors (score.0/score.2), never from a name."""
    path = tiny("bt_inform")
    rm = load_reward_model(path, dtype="float32", device="cpu")
    assert isinstance(rm.head, torch.nn.Sequential) and rm.kind == "bt"
    card = INFORMCard.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    prompts, completions = pointwise_cases()
    want = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = tok.apply_chat_template(full_messages(p, c), tokenize=True, return_tensors="pt", return_dict=True)
            want.append(float(card(ids["input_ids"])[0, 0]))
    assert_close(rm.score(prompts, completions), want, ATOL, "INF-ORM score")
    assert_differs(want[0], want[1], ATOL, "rewards of two responses")
    # the plain classifier would have read a freshly initialised linear head instead
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    assert plain.score.weight.shape == (1, plain.config.hidden_size)


def test_unrecognised_score_head_is_refused(tmp_path, tiny):
    """A head of another shape (here INF-ORM's without its second layer) is refused with what was found, never
    loaded as a linear classifier with a random head."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = Path(tiny("bt_inform"))
    dst = tmp_path / "odd-head"
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    del state["score.2.weight"], state["score.2.bias"]
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unrecognised Bradley-Terry score head.*score.0.weight"):
        load_reward_model(str(dst), device="cpu")


def test_qwen3_reasoning_is_scored_as_its_template_renders_it(tiny):
    """Qwen3's template keeps the final turn's <think> block (an empty one when the response has none) and drops the
    reasoning of earlier assistant turns: the reward reads exactly that text."""
    path = tiny("bt_qwen3")
    rm = load_reward_model(path, dtype="float32", device="cpu")
    ref = CardPipeline(path, system_role=True)
    history = [{"role": "user", "content": "What is two plus two?"},
               {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\nFour."},
               {"role": "user", "content": "And three plus three?"}]
    with_reasoning = "<think>\nThree and three make six.\n</think>\n\nSix."
    for response in (with_reasoning, "Six.", "<think>\nHmm.\n</think>\n\nSix."):
        chat = history + [{"role": "assistant", "content": response}]
        text = ref.text(chat)
        assert "Two and two." not in text and text.count("<think>") == 1  # earlier reasoning dropped
        assert_close(rm.score([history], [response]), [ref.reward(chat)], ATOL, "qwen3 reasoning")
    assert_differs(ref.reward(history + [{"role": "assistant", "content": with_reasoning}]),
                   ref.reward(history + [{"role": "assistant", "content": "Six."}]), ATOL, "reasoning changes it")


def test_gemma2_soft_capping_is_never_dropped(tiny):
    """transformers' SDPA attention ignores Gemma-2's attn_logit_softcapping without a word: the default on CPU is
    eager (the card's flash_attention_2 caps too), and asking for SDPA is refused rather than scored wrongly."""
    path = tiny("bt_gemma2")
    rm = load_reward_model(path, dtype="float32", device="cpu")
    assert rm.model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="soft-capping"):
        load_reward_model(path, dtype="float32", device="cpu", attn_implementation="sdpa")
    # what the refusal protects from: the same weights through SDPA give other rewards (transformers 5.2x and
    # later refuse SDPA for Gemma-2 themselves)
    try:
        sdpa = transformers.AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32,
                                                                               attn_implementation="sdpa")
    except ValueError as err:
        assert "does not support an attention implementation" in str(err)
        return
    ids = rm.encode(full_messages("Write a poem.", "Roses are red, and books are good friends."))
    with torch.inference_mode():
        dropped = float(sdpa(torch.tensor([ids])).logits[0, 0])
    capped = rm.score(["Write a poem."], ["Roses are red, and books are good friends."])[0]
    assert abs(dropped - capped) > 1e-3, (dropped, capped)
