"""PairRM / Better-PairRM parity: the library against a re-implementation of llm-blender's ``DebertaV2PairRM``
forward fed by ``tokenize_pair`` (seed 001 / llm-blender ``blender_utils``), one pair at a time.

Reference:
- model: ``DebertaV2Model`` with the ``pretrained_model.*`` tensors, head ``Linear(2h,h) -> tanh -> Linear(h,1)``
  from ``head_layer.{1,4}``; forward drops all-pad columns, reads the last hidden state at the <|source|>,
  <|candidate1|>, <|candidate2|> tokens, logit = mean(head([src; c1]) - head([src; c2])).
- inputs: ``tokenize_pair`` pads to max_length (PairRM 1224 + 2*412, Better-PairRM 2030 + 2*670).
  PairRM: single-turn source = the user text; multi-turn = llm-blender ``compare_conversations``' instruction +
  "USER: ...\\nAssistant: <Response i>" lines, candidates "<Response i>: ..." lines (system message folded into
  the first user turn). Better-PairRM: the card's ``tokenize_conv_pair`` (Vicuna jinja template,
  ``truncate_texts`` left 2030 / right 670).
- compare (mode "[A,B]+[B,A]"): P(a beats b) = sigmoid((logit(a, b) - logit(b, a)) / 2).
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import pytest
import torch
from reference_helpers import (
    ATOL,
    CANDIDATES,
    LONG,
    MEDIUM,
    MULTI,
    MULTI_SYS,
    SHORT,
    SINGLE,
    assert_close,
    assert_differs,
    check_pairwise_ranking,
    completion_text,
    conv,
    fold_system,
    pairwise_cases,
    prompt_messages,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

from rmplugins import load_reward_model

MY_JINJA_TEMPLATE = """{% for message in messages -%}
{% if message['role'] == 'user' -%}
USER: {{ message['content']|trim -}}
{% if not loop.last -%}
{% endif %}
{% elif message['role'] == 'assistant' -%}
ASSISTANT: {{ message['content']|trim -}}
{% if not loop.last -%}
{% endif %}
{% elif message['role'] == 'user_context' -%}
USER: {{ message['content']|trim -}}
{% if not loop.last -%}
{% endif %}
{% elif message['role'] == 'system' -%}
SYSTEM MESSAGE: {{ message['content']|trim -}}
{% if not loop.last -%}
{% endif %}
{% endif %}
{% endfor -%}
{% if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}
ASSISTANT: {% endif -%}"""
my_jinja2_template = jinja2.Environment().from_string(MY_JINJA_TEMPLATE)


class ReferencePairRM:
    def __init__(self, path: str, better: bool):
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        config = DebertaV2Config.from_pretrained(path)
        self.config = config
        state = load_file(str(Path(path) / "model.safetensors"))
        self.backbone = DebertaV2Model(config)
        missing, unexpected = self.backbone.load_state_dict(
            {k[len("pretrained_model."):]: v.float() for k, v in state.items() if k.startswith("pretrained_model.")},
            strict=False)
        assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
        self.backbone.eval()
        h = config.hidden_size
        self.head = torch.nn.Sequential(torch.nn.Dropout(config.drop_out), torch.nn.Linear(2 * h, h), torch.nn.Tanh(),
                                        torch.nn.Dropout(config.drop_out), torch.nn.Linear(h, config.n_tasks)).eval()
        self.head.load_state_dict({k[len("head_layer."):]: v.float() for k, v in state.items()
                                   if k.startswith("head_layer.")})
        self.better = better
        self.source_max_length, self.candidate_max_length = (2030, 670) if better else (1224, 412)
        self._cache: dict[tuple, float] = {}

    # ---- llm-blender / card code
    def tokenize_pair(self, sources, candidate1s, candidate2s):
        tokenizer = self.tokenizer
        source_max_length, candidate_max_length = self.source_max_length, self.candidate_max_length
        ids = []
        assert len(sources) == len(candidate1s) == len(candidate2s)
        max_length = source_max_length + 2 * candidate_max_length
        for i in range(len(sources)):
            source_ids = tokenizer.encode("<|source|>" + sources[i], max_length=source_max_length, truncation=True)
            candidate_max_length = (max_length - len(source_ids)) // 2
            candidate1_ids = tokenizer.encode("<|candidate1|>" + candidate1s[i], max_length=candidate_max_length,
                                              truncation=True)
            candidate2_ids = tokenizer.encode("<|candidate2|>" + candidate2s[i], max_length=candidate_max_length,
                                              truncation=True)
            ids.append(source_ids + candidate1_ids + candidate2_ids)
        return tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding="max_length", max_length=max_length)

    def truncate_texts(self, text, max_length, truncate_side):
        self.tokenizer.truncation_side = truncate_side
        tokens = self.tokenizer.encode(text, add_special_tokens=False, max_length=max_length)
        self.tokenizer.truncation_side = "right"
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def tokenize_conv_pair(self, convAs, convBs):
        for c_a, c_b in zip(convAs, convBs):
            assert len(c_a) == len(c_b)
            # the card checks the USER turns (even indices); with a leading system message they shift, so check
            # what it means: everything but the compared answers is shared
            assert all(c_a[i]['content'] == c_b[i]['content'] for i in range(len(c_a) - 1))
        inputs = [self.truncate_texts(my_jinja2_template.render(messages=x[:-1], add_generation_prompt=True), 2030,
                                      "left") for x in convAs]
        cand1_texts = [self.truncate_texts(x[-1]['content'], 670, "right") for x in convAs]
        cand2_texts = [self.truncate_texts(x[-1]['content'], 670, "right") for x in convBs]
        return self.tokenize_pair(inputs, cand1_texts, cand2_texts)

    @staticmethod
    def get_pair_from_conv(convAs, convBs):
        """llm-blender ``compare_conversations`` / ``get_pair_from_conv`` (roles USER / ASSISTANT)."""
        instructions = ["Finish the following coversation in each i-th turn by filling in <Response i> with your "
                        "response."] * len(convAs)
        inputs = ["\n".join(["USER: " + x[i]['content'] + f"\nAssistant: <Response {i // 2 + 1}>"
                             for i in range(0, len(x), 2)]) for x in convAs]
        cand1_texts = ["\n".join([f"<Response {i // 2 + 1}>: " + x[i]['content'] for i in range(1, len(x), 2)])
                       for x in convAs]
        cand2_texts = ["\n".join([f"<Response {i // 2 + 1}>: " + x[i]['content'] for i in range(1, len(x), 2)])
                       for x in convBs]
        inputs = [inst + inp for inst, inp in zip(instructions, inputs)]
        return inputs, cand1_texts, cand2_texts

    @torch.no_grad()
    def forward(self, input_ids, attention_mask) -> torch.Tensor:
        cfg = self.config
        keep_column_mask = attention_mask.ne(0).any(dim=0)
        input_ids = input_ids[:, keep_column_mask]
        attention_mask = attention_mask[:, keep_column_mask]
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        encs = outputs.hidden_states[-1]
        s = torch.where(input_ids == cfg.source_prefix_id)
        c1 = torch.where(input_ids == cfg.cand1_prefix_id)
        c2 = torch.where(input_ids == cfg.cand2_prefix_id)
        left = self.head(torch.cat([encs[s[0], s[1], :], encs[c1[0], c1[1], :]], dim=-1))
        right = self.head(torch.cat([encs[s[0], s[1], :], encs[c2[0], c2[1], :]], dim=-1))
        return (left - right).mean(dim=-1)

    # ---- one pair at a time
    def encodings(self, prompt, a, b):
        messages = prompt_messages(prompt)
        a, b = completion_text(a), completion_text(b)
        if self.better:
            return self.tokenize_conv_pair([messages + [{"role": "assistant", "content": a}]],
                                           [messages + [{"role": "assistant", "content": b}]])
        messages = fold_system(messages)
        if len(messages) == 1:
            return self.tokenize_pair([messages[0]["content"]], [a], [b])
        conv_a = [{"role": m["role"].upper(), "content": m["content"]} for m in messages]
        conv_a.append({"role": "ASSISTANT", "content": a})
        conv_b = conv_a[:-1] + [{"role": "ASSISTANT", "content": b}]
        return self.tokenize_pair(*self.get_pair_from_conv([conv_a], [conv_b]))

    def logit(self, prompt, a, b) -> float:
        key = (repr(prompt), completion_text(a), completion_text(b))
        if key not in self._cache:
            enc = self.encodings(prompt, a, b)
            self._cache[key] = self.forward(enc["input_ids"], enc["attention_mask"]).item()
        return self._cache[key]

    def prob(self, prompt, a, b) -> float:
        """mode "[A,B]+[B,A]" as the library's contract states it."""
        return 1.0 / (1.0 + math.exp(-(self.logit(prompt, a, b) - self.logit(prompt, b, a)) / 2))


@pytest.fixture(scope="module", params=["pairrm", "better_pairrm"])
def setup(request, tiny):
    path = tiny(request.param)
    better = request.param == "better_pairrm"
    return request.param, load_reward_model(path, dtype="float32", device="cpu"), ReferencePairRM(path, better)


def test_kind_detected(setup):
    name, rm, _ = setup
    assert rm.kind == "pairrm"
    with pytest.raises(TypeError, match="compare"):
        rm.score([SINGLE], [SHORT])


def test_compare_matches_reference(setup):
    _, rm, ref = setup
    prompts, a, b = pairwise_cases()
    got = rm.compare(prompts, a, b)
    want = [ref.prob(p, x, y) for p, x, y in zip(prompts, a, b)]
    assert_close(got, want, ATOL, "pairrm compare")


def test_position_swap_is_not_vacuous(setup):
    """logit(a, b) != -logit(b, a): one order alone would give a different probability."""
    _, rm, ref = setup
    for prompt in (SINGLE, MULTI):
        one_order = 1.0 / (1.0 + math.exp(-ref.logit(prompt, SHORT, MEDIUM)))
        assert_differs(one_order, ref.prob(prompt, SHORT, MEDIUM), ATOL, "[A,B] vs. [A,B]+[B,A]")
        ab, ba = rm.compare([prompt, prompt], [SHORT, MEDIUM], [MEDIUM, SHORT])
        assert abs(ab + ba - 1.0) < 1e-5
        assert_differs(ab, 0.5, ATOL, "a non-trivial preference")


def test_multi_turn_and_forms(setup):
    _, rm, ref = setup
    got = rm.compare([MULTI, MULTI_SYS, MULTI_SYS], [conv(LONG), SHORT, ""], [SHORT, conv(LONG), conv(MEDIUM)])
    want = [ref.prob(MULTI, LONG, SHORT), ref.prob(MULTI_SYS, SHORT, LONG), ref.prob(MULTI_SYS, "", MEDIUM)]
    assert_close(got, want, ATOL, "pairrm multi-turn")
    # the multi-turn format matters: the same last user turn alone gives a different answer
    assert_differs(want[0], ref.prob(MULTI[-1]["content"], LONG, SHORT), ATOL, "multi-turn vs. last turn only")


def test_truncation_of_long_inputs(setup):
    """Sources and candidates longer than the limits (right truncation for PairRM; Better-PairRM's left-truncated
    source and 670-token candidates) against tokenize_pair's own truncation."""
    _, rm, ref = setup
    long_source = " ".join(["Please explain step by step why the weather in Paris is important today."] * 130)
    long_answer = " ".join(["The answer is that the weather can change, because the city is not easy."] * 60)
    prompt = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."},
              {"role": "user", "content": long_source}]
    enc = ref.encodings(prompt, long_answer, SHORT)
    assert int(enc["attention_mask"].sum()) > 1500  # really long, close to the limits
    got = rm.compare([prompt], [long_answer], [SHORT])
    want = [ref.prob(prompt, long_answer, SHORT)]
    assert_close(got, want, ATOL, "pairrm truncated")


@pytest.mark.parametrize("prompt", [SINGLE, MULTI_SYS], ids=["single", "multi"])
def test_rank_round_robin_and_tournament(setup, prompt):
    _, rm, ref = setup
    cands = [conv(c) if i % 2 else c for i, c in enumerate(CANDIDATES)]
    check_pairwise_ranking(rm, prompt, cands, lambda i, j: ref.prob(prompt, cands[i], cands[j]))


def test_better_variant_uses_its_own_format(tiny):
    """Same weights in both tiny dirs: only the input format differs, and it changes the result."""
    pairrm = ReferencePairRM(tiny("pairrm"), better=False)
    better = ReferencePairRM(tiny("better_pairrm"), better=True)
    assert_differs(pairrm.prob(MULTI, SHORT, MEDIUM), better.prob(MULTI, SHORT, MEDIUM), ATOL, "PairRM vs. Better")
