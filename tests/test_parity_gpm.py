"""GPM parity: the library against seed 004's ``GPMPipeline`` (``CustomRewardModel.custom_forward``,
``create_skew_symmetric_block_matrix``, ``generate_high_dim_result_with_prompt``), one conversation at a time, on
the tiny GPM-Llama-3.1 layout (d = 6, prompt head present) and GPM-Gemma-2B's (a Gemma backbone, which the card
builds from the checkpoint's own classes). Tolerance 1e-4 (tau = 0.1 scales errors by 10).

- compare: P(a beats b) = sigmoid(s / tau), s = generate_high_dim_result_with_prompt(v_a, v_b, prompt state of a).
- rank: the GPO score of models.md: table[i][j] = s(i beats j) / tau, score_i = (1/n) sum_j (table[i][j] - table[j][i]).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import engines
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from engines import both
from reference_helpers import (
    ATOL_GPM,
    CANDIDATES,
    LONG,
    MEDIUM,
    MULTI,
    MULTI_SYS,
    SHORT,
    SINGLE,
    assert_close,
    assert_differs,
    completion_text,
    conv,
    fold_system,
    full_messages,
    pairwise_cases,
)
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

VALUE_HEAD_DIM = 6
TAU = 0.1


def get_reward_model(base_causal_model, base_llm_model, value_head_dim: int):
    """The card's factory with is_general_preference=True, add_prompt_head=True."""

    class CustomRewardModel(base_causal_model):
        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_llm_model(config))
            self.value_head = nn.Linear(config.hidden_size, value_head_dim, bias=False)
            self.prompt_head = nn.Linear(config.hidden_size, value_head_dim // 2, bias=False)
            self.post_init()

        def custom_forward(self, input_ids=None, attention_mask: Optional[torch.Tensor] = None, return_output=False):
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            outputs = getattr(self, self.base_model_prefix)(input_ids, attention_mask=attention_mask,
                                                            position_ids=position_ids)
            last_hidden_states = outputs["last_hidden_state"]
            values = self.value_head(last_hidden_states)
            eos_indices = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1)
            eos_indices = eos_indices.unsqueeze(1)
            reward_list = [values[:, :, dim].gather(dim=1, index=eos_indices) for dim in range(value_head_dim)]
            reward = F.normalize(torch.cat(reward_list, dim=1), p=2, dim=-1)
            return (reward, outputs) if return_output else (reward, None)

        def create_skew_symmetric_block_matrix(self, dim, device, dtype, prompt_hidden_states):
            batch_size = prompt_hidden_states.shape[0]
            assert dim % 2 == 0
            block_values = self.prompt_head(prompt_hidden_states).view(batch_size, dim // 2)
            block_values = torch.softmax(block_values, dim=-1)
            batch_R_matrices = torch.zeros((batch_size, dim, dim), device=device, dtype=dtype)
            for i in range(0, dim, 2):
                batch_R_matrices[:, i, i + 1] = -block_values[:, i // 2]
                batch_R_matrices[:, i + 1, i] = block_values[:, i // 2]
            return batch_R_matrices

    return CustomRewardModel


def generate_high_dim_result_with_prompt(model, value_head_dim, chosen_reward, rejected_reward, prompt_hidden_states):
    R_matrix = model.create_skew_symmetric_block_matrix(value_head_dim, chosen_reward.device, chosen_reward.dtype,
                                                        prompt_hidden_states)
    transformed_chosen = torch.bmm(chosen_reward.view(chosen_reward.shape[0], 1, value_head_dim),
                                   R_matrix.transpose(1, 2))
    result = torch.bmm(transformed_chosen, rejected_reward.view(rejected_reward.shape[0], value_head_dim, 1))
    return result.view(chosen_reward.shape[0])


class GPMPipeline:
    def __init__(self, path: str, value_head_dim: int = VALUE_HEAD_DIM, max_length: int = 4096):
        self.value_head_dim = value_head_dim
        self.max_length = max_length
        config = AutoConfig.from_pretrained(path)
        base_class = AutoModel._model_mapping[type(config)]  # the card's: the checkpoint's own classes
        base_causal_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
        cls_class = get_reward_model(base_causal_class, base_class, value_head_dim)
        self.model = cls_class.from_pretrained(path, config=config, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
            tokenizer.pad_token_id = tokenizer.eos_token_id
            self.model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.truncation_side = "right"
        self.tokenizer = tokenizer

    @torch.no_grad()
    def __call__(self, samples: List[List[Dict[str, str]]], return_prompt=False):
        input_texts = [self.tokenizer.apply_chat_template(sample, tokenize=False) for sample in samples]
        inputs = self.tokenizer(input_texts, truncation=True, max_length=self.max_length, padding=True,
                                return_tensors="pt")
        inputs["input_ids"][:, -1] = self.tokenizer.eos_token_id
        inputs["attention_mask"][:, -1] = 1
        rewards, outputs = self.model.custom_forward(**inputs, return_output=return_prompt)
        if not return_prompt:
            return rewards
        chosen_response_len_list = []
        prompt_texts = [self.tokenizer.apply_chat_template([sample[0]], tokenize=False) for sample in samples]
        for i in range(len(input_texts)):
            prompt_token = self.tokenizer(prompt_texts[i], max_length=self.max_length, padding=False,
                                          truncation=True, return_tensors="pt")
            chosen_token = self.tokenizer(input_texts[i], max_length=self.max_length, padding=False,
                                          truncation=True, return_tensors="pt")
            chosen_response_len_list.append(chosen_token["attention_mask"].sum() - prompt_token["attention_mask"].sum())
        chosen_response_len = torch.tensor(chosen_response_len_list).view(-1, 1)
        hidden = outputs["last_hidden_state"]
        prompt_end_index = hidden.size(1) - chosen_response_len - 1
        self.last_prompt_end_index = prompt_end_index
        index = prompt_end_index.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        prompt_hidden_state = torch.gather(hidden, dim=1, index=index).squeeze(1)
        return rewards, prompt_hidden_state

    # ---- one conversation at a time
    def embed(self, prompt, completion):
        return self([full_messages(prompt, completion)], return_prompt=True)

    def preference(self, prompt, a, b) -> float:
        """s(a beats b), the card's example: reward1 + prompt state from context1, reward2 from context2."""
        reward1, prompt_hidden_state = self.embed(prompt, a)
        reward2 = self([full_messages(prompt, b)])
        with torch.no_grad():
            return generate_high_dim_result_with_prompt(self.model, self.value_head_dim, reward1, reward2,
                                                        prompt_hidden_state).item()

    def prob(self, prompt, a, b) -> float:
        return 1.0 / (1.0 + math.exp(-self.preference(prompt, a, b) / TAU))

    def gpo_scores(self, prompt, candidates) -> list[float]:
        n = len(candidates)
        embedded = [self.embed(prompt, c) for c in candidates]  # one pipeline call per response (O(n) forwards)
        v = torch.cat([e[0] for e in embedded])
        with torch.no_grad():
            table = [[generate_high_dim_result_with_prompt(self.model, self.value_head_dim, v[i:i + 1], v[j:j + 1],
                                                           embedded[i][1]).item() / TAU for j in range(n)]
                     for i in range(n)]
        return [sum(table[i][j] - table[j][i] for j in range(n)) / n for i in range(n)]


# tiny and published vocabularies; GPM-Gemma-2B's layout (vLLM's plugin is Llama's: the transformers engine only)
@pytest.fixture(scope="module", params=both(["gpm", "gpm_real_vocab"]) + [
    pytest.param(("gpm_gemma", "transformers"), id="gpm_gemma-transformers")])
def setup(request, tiny, references):
    kind, engine = request.param
    path = tiny(kind)
    rm = engines.load(path, engine)
    yield rm, references(kind, lambda: GPMPipeline(path))
    engines.close(rm)


@pytest.fixture
def multi(setup):
    """The multi-turn prompt: with a system message where the template has the role (Gemma's has none)."""
    rm, _ = setup
    return MULTI if "gemma" in rm.name_or_path.lower() else MULTI_SYS


def test_kind_detected(setup):
    rm, _ = setup
    assert rm.kind == "gpm"
    with pytest.raises(TypeError, match="compare"):
        rm.score([SINGLE], [SHORT])


def test_compare_matches_pipeline(setup, multi):
    rm, ref = setup
    prompts, a, b = pairwise_cases(with_system=multi is MULTI_SYS)
    got = rm.compare(prompts, a, b)
    want = [ref.prob(p, x, y) for p, x, y in zip(prompts, a, b)]
    assert_close(got, want, ATOL_GPM, "gpm compare")
    assert any(abs(w - 0.5) > 100 * ATOL_GPM for w in want)


def test_prompt_state_and_operator_are_not_vacuous(setup, multi):
    """The prompt state is not the last token, and an off-by-one prompt index changes R (and so the result)."""
    _, ref = setup
    for prompt in (SINGLE, multi):
        _, h_prompt = ref.embed(prompt, MEDIUM)
        idx = int(ref.last_prompt_end_index)
        messages = full_messages(prompt, MEDIUM)
        ids = ref.tokenizer(ref.tokenizer.apply_chat_template(messages, tokenize=False), return_tensors="pt")
        assert idx < ids["input_ids"].shape[1] - 1
        with torch.no_grad():
            out = ref.model.model(**ids).last_hidden_state[0]
            assert_close(out[idx], h_prompt[0], 1e-5, "prompt state index")
            R = ref.model.create_skew_symmetric_block_matrix(VALUE_HEAD_DIM, "cpu", torch.float32, out[idx:idx + 1])
            R_next = ref.model.create_skew_symmetric_block_matrix(VALUE_HEAD_DIM, "cpu", torch.float32,
                                                                  out[idx + 1:idx + 2])
        assert_differs(R, R_next, ATOL_GPM, "R at the prompt end vs. one token later")
    # antisymmetry of the reference preference: s(a, b) = -s(b, a) under the same prompt
    s_ab, s_ba = ref.preference(SINGLE, SHORT, LONG), ref.preference(SINGLE, LONG, SHORT)
    assert abs(s_ab + s_ba) < 1e-5 and abs(s_ab) > 1e-3


def test_multi_turn_and_forms(setup, multi):
    rm, ref = setup
    got = rm.compare([MULTI, multi, multi], [conv(LONG), SHORT, ""], [SHORT, conv(LONG), conv(MEDIUM)])
    want = [ref.prob(MULTI, LONG, SHORT), ref.prob(multi, SHORT, LONG), ref.prob(multi, "", MEDIUM)]
    assert_close(got, want, ATOL_GPM, "gpm multi-turn")


def test_a_template_without_a_system_role_scores_the_folded_conversation(tiny, references):
    """Gemma's template refuses a system message (so does the card's pipeline on it): the system text is folded into
    the first user turn, as for every family, before the prompt state is located: the card on the folded turns."""
    import rmplugins

    path = tiny("gpm_gemma")
    ref = references("gpm_gemma", lambda: GPMPipeline(path))
    rm = rmplugins.load_reward_model(path, dtype="float32", device="cpu")
    got = rm.compare([MULTI_SYS, MULTI_SYS], [SHORT, conv(LONG)], [LONG, ""])
    want = [ref.prob(fold_system(MULTI_SYS), SHORT, LONG), ref.prob(fold_system(MULTI_SYS), LONG, "")]
    assert_close(got, want, ATOL_GPM, "gpm on Gemma with a system message")
    assert_differs(want[0], ref.prob(MULTI, SHORT, LONG), ATOL_GPM, "the system text counts")


@pytest.mark.vllm
def test_the_vllm_plugin_refuses_a_gpm_that_is_not_llama(tiny):
    import rmplugins

    with pytest.raises(ValueError, match="built on vLLM's Llama.*'gemma'"):
        rmplugins.load_reward_model(tiny("gpm_gemma"), engine="vllm")


@pytest.mark.parametrize("which", ["single", "multi"])
def test_rank_gpo_scores(setup, multi, which):
    rm, ref = setup
    prompt = SINGLE if which == "single" else multi
    cands = [conv(c) if i % 2 else c for i, c in enumerate(CANDIDATES)]
    ranking = rm.rank(prompt, cands)
    want = ref.gpo_scores(prompt, [completion_text(c) for c in cands])
    assert_close(ranking.scores, want, ATOL_GPM, "gpm GPO scores")
    assert ranking.best == max(range(len(want)), key=lambda i: want[i])
    assert ranking.worst == min(range(len(want)), key=lambda i: want[i])
    assert_differs(max(want), min(want), ATOL_GPM, "GPO spread")
    assert abs(sum(want)) < 1e-3  # the GPO scores of a group sum to zero (antisymmetric table)


def test_a_tau_that_would_make_every_score_wrong_is_refused(tiny, tmp_path):
    """tau = 0 gave NaN for every score and a negative tau turned every preference around, both silently."""
    import rmplugins

    for bad in (0, -0.1, float("nan"), float("inf"), "fast", "0.1", True):
        with pytest.raises(ValueError, match="tau must be a positive number"):
            rmplugins.load_reward_model(tiny("gpm"), tau=bad)
    half = rmplugins.load_reward_model(tiny("gpm"), tau=0.05)  # a real change of tau scales the scores, no more
    card = rmplugins.load_reward_model(tiny("gpm"))
    assert_close(half.rank(SINGLE, CANDIDATES).scores, [2 * s for s in card.rank(SINGLE, CANDIDATES).scores],
                 ATOL_GPM, "GPO scores at tau / 2")
