"""Bad input gets a clear error that says what was wrong and what to do (foundation issue, item 5)."""

import json
import logging
import shutil
from pathlib import Path

import pytest

import rmplugins
from rmplugins.inputs import to_conversation, to_conversations


# ----------------------------------------------------------------------------- pure input validation
def test_forms_normalise_to_the_same_conversation():
    a = to_conversation("Hi", "Hello!")
    b = to_conversation([{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello!"}])
    assert a == b
    assert a.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_multi_message_completion_with_tool_calls_keeps_the_last_answer():
    conv = to_conversation("What is 2+2?", [
        {"role": "assistant", "content": None, "tool_calls": [{"name": "calc"}]},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "It is 4."},
    ])
    assert conv.response == "It is 4."
    assert [m["role"] for m in conv.context] == ["user", "assistant", "tool"]


# ChatML that writes tool calls and results as Qwen's templates do (<tool_call>, <tool_response>)
TOOLS_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}{{ '<|im_start|>assistant\n' + m.content }}"
    "{%- for c in m.tool_calls or [] %}{{ '\n<tool_call>\n' + (c.function | tojson) + '\n</tool_call>' }}{%- endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{%- elif m.role == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + m.content + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}")


def test_tool_calls_reach_the_chat_template_as_the_card_renders_them(tiny):
    """A template that writes tool calls gets them (the card's ``apply_chat_template`` of the messages as given); they
    were dropped, so an agent's trajectory was scored as if it had called nothing. An answer that is a tool call is
    refused (an unfinished trajectory: its text alone would leave the call out); an answer's content is scored."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny("bt_qwen3")
    rm = rmplugins.load_reward_model(path, dtype="float32", device="cpu", chat_template=TOOLS_TEMPLATE)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()

    def card(messages):
        text = tok.apply_chat_template(messages, tokenize=False, chat_template=TOOLS_TEMPLATE)
        with torch.no_grad():
            return float(model(**tok(text, return_tensors="pt")).logits[0, 0])

    call = {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    prompt = [{"role": "user", "content": "Weather in Paris?"}]
    trajectory = [{"role": "assistant", "content": "", "tool_calls": [call]},
                  {"role": "tool", "content": "sunny, 21C", "tool_call_id": "c1", "name": "get_weather"},
                  {"role": "assistant", "content": "It is sunny and 21C in Paris."}]
    want = card(prompt + trajectory)
    assert rm.score([prompt], [trajectory]) == pytest.approx([want], abs=2e-5)
    without_call = [dict(trajectory[0], tool_calls=None)] + trajectory[1:]
    assert abs(card(prompt + without_call) - want) > 1e-3  # what the reward was before: the call left out
    conv = to_conversation(prompt, trajectory)
    assert conv.context[1]["tool_calls"] == [call] and conv.context[2]["tool_call_id"] == "c1"
    with pytest.raises(ValueError, match="the answer .* makes a tool call"):
        to_conversation(prompt, trajectory[:1])
    # TRL's parse of a reasoning model's answer puts its <think> block in reasoning_content: the content is scored
    reasoned = to_conversation(prompt, [{"role": "assistant", "content": "Sunny.", "reasoning_content": "Let me see."}])
    assert reasoned.response == "Sunny." and reasoned.messages[-1] == {"role": "assistant", "content": "Sunny."}
    with pytest.raises(ValueError, match="'tool_calls' must be a list of tool-call objects"):
        to_conversation(prompt, [dict(trajectory[0], tool_calls="get_weather()")] + trajectory[1:])


def test_mismatched_lengths_name_the_mismatch():
    with pytest.raises(ValueError, match="2 prompts but 3 completions"):
        to_conversations(["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="completions_b"):
        to_conversations(["a"], ["x"], ["y", "z"])


def test_prompt_must_end_with_user_turn():
    with pytest.raises(ValueError, match="must end with a user turn"):
        to_conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "c")


def test_a_missing_content_or_an_unknown_role_is_refused_not_scored_as_empty_text():
    """A message whose content is None (a dataset's missing value) was scored as an empty turn, and a misspelled
    role was reported as a prompt not ending with a user turn; only an assistant tool-call turn carries no text."""
    for prompt in ([{"role": "user", "content": None}],
                   [{"role": "system", "content": None}, {"role": "user", "content": "u"}],
                   [{"role": "user", "content": "u"}, {"role": "assistant", "content": None},
                    {"role": "user", "content": "v"}]):
        with pytest.raises(ValueError, match="has content None"):
            to_conversation(prompt, "c")
    with pytest.raises(ValueError, match="completion 0: a 'assistant' message has content None"):
        to_conversation("u", [{"role": "assistant", "content": None}])
    with pytest.raises(ValueError, match="unknown role 'usr' in message 0"):
        to_conversation([{"role": "usr", "content": "u"}], "c")


def test_system_message_only_first():
    to_conversation([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "c")
    with pytest.raises(ValueError, match="only allowed as the first"):
        to_conversation([{"role": "user", "content": "u"}, {"role": "system", "content": "s"},
                         {"role": "user", "content": "u"}], "c")


@pytest.mark.parametrize("bad", [42, None, [], [{"role": "user", "content": "x"}], [{"content": "no role"}]])
def test_completion_must_be_string_or_assistant_messages(bad):
    with pytest.raises(ValueError, match="completion 0"):
        to_conversation("prompt", bad)


def test_empty_completion_is_scored(tiny):
    rm = rmplugins.load_reward_model(tiny("armorm"), device="cpu")
    (score,) = rm.score(["Say nothing"], [""])
    assert isinstance(score, float)


# ----------------------------------------------------------------------------- model-level errors
def test_score_on_pairwise_kinds_points_to_compare_and_rank(tiny):
    for kind in ("pair_pm", "pairrm", "gpm"):
        rm = rmplugins.load_reward_model(tiny(kind), device="cpu")
        with pytest.raises(TypeError, match=r"rm\.compare.*rm\.rank"):
            rm.score(["p"], ["c"])
        with pytest.raises(TypeError, match=r"rm\.compare.*rm\.rank"):  # before: AttributeError, no guidance
            rm.score_rows(["p"], ["c"])


def test_score_details_only_for_armorm(tiny):
    rm = rmplugins.load_reward_model(tiny("bt_llama3"), device="cpu")
    with pytest.raises(TypeError, match="armorm"):
        rm.score_details(["p"], ["c"])


def test_rank_rejects_unknown_method_and_empty_candidates(tiny):
    rm = rmplugins.load_reward_model(tiny("pair_pm"), device="cpu")
    with pytest.raises(ValueError, match="round_robin"):
        rm.rank("p", ["a", "b"], method="bubble")
    with pytest.raises(ValueError, match="non-empty list"):
        rm.rank("p", [])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tokenizer_without_chat_template_is_a_clear_error(tiny, tmp_path):
    path = _copy(tiny("armorm"), tmp_path / "no-template")
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat_template"):
        rmplugins.load_reward_model(str(path), device="cpu")
    # ...and the documented way out works
    from rmplugins.testing import LLAMA3_CHAT_TEMPLATE

    rm = rmplugins.load_reward_model(str(path), device="cpu", chat_template=LLAMA3_CHAT_TEMPLATE)
    assert rm.score(["hi"], ["hello"]) == pytest.approx(
        rmplugins.load_reward_model(tiny("armorm"), device="cpu").score(["hi"], ["hello"]), abs=1e-6)


def test_unknown_kind_is_a_clear_error(tiny, tmp_path):
    path = _copy(tiny("bt_llama3"), tmp_path / "masked-lm")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cannot tell which reward-model family"):
        rmplugins.load_reward_model(str(path), device="cpu")
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    cfg["id2label"] = {"0": "bad", "1": "ok", "2": "good"}
    cfg["num_labels"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="3 labels is not a Bradley-Terry"):
        rmplugins.load_reward_model(str(path), device="cpu")
    with pytest.raises(ValueError, match="unknown kind"):
        rmplugins.load_reward_model(tiny("bt"), kind="reward", device="cpu")


def test_pair_pm_needs_single_token_answers(tiny, tmp_path):
    path = _copy(tiny("pair_pm"), tmp_path / "no-single-A")
    tok = json.loads((path / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Prepend", "prepend": "~"}  # every text now starts with "~": "A" -> "~", "A"
    (path / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="'A' must be a single token"):
        rmplugins.load_reward_model(str(path), device="cpu")


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(ValueError, match="without config.json"):
        rmplugins.load_reward_model(str(tmp_path), device="cpu")


def test_too_long_sequences_are_truncated_with_one_warning(tiny, caplog):
    rm = rmplugins.load_reward_model(tiny("bt_llama3"), device="cpu", max_length=24)
    long = "the quick brown fox jumps over the lazy dog " * 20
    with caplog.at_level(logging.WARNING, logger="rmplugins"):
        scores = rm.score(["hi", "hi", "hi"], [long, long + " again", "short"])
    warnings = [r for r in caplog.records if "exceeds max_length=24" in r.getMessage()]
    assert len(warnings) == 1
    # left truncation keeps the end of the response, which the reward reads: two texts ending alike score alike
    full = rmplugins.load_reward_model(tiny("bt_llama3"), device="cpu")
    assert scores[0] != pytest.approx(full.score(["hi"], [long])[0], abs=1e-4)
    ids = rm.encode(to_conversation("hi", long).messages)
    assert len(ids) == 24


def test_max_length_beyond_the_trained_positions_is_warned(tiny, caplog):
    trained = json.loads((Path(tiny("bt_llama3")) / "config.json").read_text())["max_position_embeddings"]
    with caplog.at_level(logging.WARNING, logger="rmplugins"):
        rmplugins.load_reward_model(tiny("bt_llama3"), device="cpu", max_length=trained)
        assert not [r for r in caplog.records if "positions the model was trained for" in r.getMessage()]
        rmplugins.load_reward_model(tiny("bt_llama3"), device="cpu", max_length=trained + 1)
    (warning,) = [r.getMessage() for r in caplog.records if "positions the model was trained for" in r.getMessage()]
    assert f"max_length {trained + 1} is beyond the {trained} positions" in warning


def test_armorm_truncation_that_removes_the_gating_token_is_explained(tiny):
    rm = rmplugins.load_reward_model(tiny("armorm"), device="cpu", max_length=16)
    with pytest.raises(ValueError, match="too long: it has more than max_length=16 tokens"):
        rm.score(["a fairly long question that fills the budget " * 4], ["answer"])
    full = rmplugins.load_reward_model(tiny("armorm"), device="cpu")
    with pytest.raises(ValueError, match="too long: it has more than max_length=4096 tokens"):
        full.score(["word " * 20000], ["answer"])  # the 100k-character prompt


def test_broken_checkpoint_files_name_the_file(tiny, tmp_path):
    path = _copy(tiny("bt_llama3"), tmp_path / "broken")
    weights = next(path.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(ValueError, match=f"{weights.name} is not a complete safetensors file.*fetch it again"):
        rmplugins.load_reward_model(str(path), device="cpu")
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="shorter than a header"):
        rmplugins.load_reward_model(str(path), device="cpu")
    weights.write_bytes(len(b"{not json").to_bytes(8, "little") + b"{not json")
    with pytest.raises(ValueError, match="unreadable header"):
        rmplugins.load_reward_model(str(path), device="cpu")
    weights.write_bytes(data)
    config = path / "config.json"
    config.write_text(config.read_text()[:40])  # truncated
    with pytest.raises(ValueError, match="config.json: cannot read the checkpoint's configuration"):
        rmplugins.load_reward_model(str(path), device="cpu")
    fresh = _copy(tiny("bt_llama3"), tmp_path / "no-tokenizer")
    (fresh / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="has no tokenizer files"):
        rmplugins.load_reward_model(str(fresh), device="cpu")


def test_a_refusal_keeps_its_kind_through_pickling_and_unknown_kinds_are_refused():
    """A refusal's kind travels with it (a process pool, a distributed gather); a kind outside the vocabulary is a
    bug at the raising site, said at once."""
    import pickle

    from rmplugins.refusals import KINDS, TOO_LONG, Unscorable, kind_of

    err = pickle.loads(pickle.dumps(Unscorable("the judge prompt has 9000 tokens", TOO_LONG)))
    assert isinstance(err, ValueError) and str(err) == "the judge prompt has 9000 tokens" and kind_of(err) == TOO_LONG
    assert kind_of(ValueError("anything else")) == "rejected" and kind_of(ValueError("x"), "unreadable") == "unreadable"
    assert len(set(KINDS)) == 5
    with pytest.raises(ValueError, match="unknown refusal kind 'long'"):
        Unscorable("x", "long")
