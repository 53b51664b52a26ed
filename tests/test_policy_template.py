"""Recovering conversations from policy-templated text (rmplugins.policy_template), for several template styles."""

import pytest
from transformers import AutoTokenizer

from rmplugins.policy_template import PolicyTemplate, TemplateMismatch, plain_split, strip_prefix_loose
from rmplugins.testing import MISTRAL_CHAT_TEMPLATE

CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Qwen, a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

SINGLE = [{"role": "user", "content": "What is the capital of France?"}]
MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
         {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Write code:\n\nprint the number 42"}]
NO_SYSTEM_MULTI = MULTI[1:]


def _with_template(tok, template):
    tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    if template:
        tok.chat_template = template
    return tok


@pytest.mark.parametrize("style,template,convs", [
    ("llama3", None, [SINGLE, MULTI, NO_SYSTEM_MULTI]),
    ("chatml", CHATML_DEFAULT_SYSTEM, [SINGLE, MULTI, NO_SYSTEM_MULTI]),
    ("gemma", GEMMA, [SINGLE, NO_SYSTEM_MULTI]),
    ("mistral", MISTRAL_CHAT_TEMPLATE, [SINGLE, NO_SYSTEM_MULTI]),
])
def test_recovers_conversation_and_response(policy_tok, style, template, convs):
    tok = _with_template(policy_tok, template)
    pt = PolicyTemplate(tok, style)
    for conv in convs:
        prompt = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        # OpenRLHF's query: the generated answer plus the end-of-turn token, decoded with special tokens kept
        query = prompt + "Paris, of course." + (pt.answer_end or tok.eos_token)
        messages, response = pt.split(query, prompt)
        assert messages == conv, style  # Qwen-style default system message is not invented into the conversation
        assert response == "Paris, of course."


def test_openrlhf_token_round_trip(policy_tok):
    """The query as OpenRLHF builds it: decode(prompt ids + generated ids, skip_special_tokens=False)."""
    pt = PolicyTemplate(policy_tok)
    prompt = policy_tok.apply_chat_template(MULTI, tokenize=False, add_generation_prompt=True)
    prompt_ids = policy_tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = policy_tok(" The answer is 42.", add_special_tokens=False)["input_ids"] + [policy_tok.eos_token_id]
    query = policy_tok.decode(prompt_ids + answer_ids, skip_special_tokens=False)
    messages, response = pt.split(query, prompt)
    assert messages == MULTI
    assert response == " The answer is 42."


def test_without_prompt_or_with_truncated_prompt(policy_tok):
    pt = PolicyTemplate(policy_tok)
    prompt = policy_tok.apply_chat_template(MULTI, tokenize=False, add_generation_prompt=True)
    query = prompt + "Sure.<|eot_id|>"
    assert pt.split(query, None) == (MULTI, "Sure.")
    # the trainer cut the prompt's start: the response is still found, but the cut prompt does not parse
    with pytest.raises(TemplateMismatch, match="not rendered by the chat template"):
        pt.split(query[40:], prompt[40:])


def test_foreign_text_is_reported(policy_tok):
    pt = PolicyTemplate(policy_tok)
    with pytest.raises(TemplateMismatch, match="generation prompt"):
        pt.split("USER: hi ASSISTANT: hello", "USER: hi ASSISTANT:")
    with pytest.raises(TemplateMismatch):
        pt.parse_prompt("<|begin_of_text|>hello<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_needs_a_chat_template(policy_tok):
    tok = _with_template(policy_tok, None)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        PolicyTemplate(tok)


def test_plain_mode_and_loose_prefix():
    assert plain_split("Question: 2+2? Answer: 4", "Question: 2+2? Answer:") == (
        [{"role": "user", "content": "Question: 2+2? Answer:"}], " 4")
    assert strip_prefix_loose("<s> [INST] hi [/INST] ok", "<s>[INST] hi [/INST]") == " ok"
    assert strip_prefix_loose("abc", "abd") is None
    with pytest.raises(TemplateMismatch, match="does not start with"):
        plain_split("something else", "prompt")
    with pytest.raises(TemplateMismatch, match="no 'prompts'"):
        plain_split("query", None)
