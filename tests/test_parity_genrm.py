"""Generative judges (kind "genrm") against plain transformers written here: each judge prompt built from the
documented format and run alone (the verdicts' log-probabilities from one full forward each; greedy ``generate``
and the spec's parse), on Qwen3 (think block), Llama-3, Gemma-2 (soft-capped logits) and Mistral judges, on both
engines. Then the pairwise rules (round robin, circle, tournament) from those compares, the None-on-no-verdict
path, and the judges inside TRL's GRPO, the server and a recipe."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import engines
import pytest
import torch
import transformers
from reference_helpers import ATOL, CANDIDATES, MULTI, MULTI_SYS, SINGLE, SYSTEM
from transformers import AutoTokenizer

import rmplugins
from rmplugins import PRESETS, JudgeSpec

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ["genrm_qwen3", "policy", "genrm_gemma2", "genrm_mistral",  # Qwen3, Llama-3, Gemma-2, Mistral judges
           "genrm_qwen35", "genrm_gemma3"]  # Qwen3.5 and Gemma-3 as they ship: *ForConditionalGeneration
POINTWISE = JudgeSpec(template="Question: {prompt}\n\nAnswer: {response}\n\nIs the answer helpful? Yes or No.",
                      verdicts={"Yes": 1.0, "No": 0.0}, system=SYSTEM, answer_prefix="Verdict:", name="yes-no")
PAIRWISE = PRESETS["mt-bench-logits"]  # multi-token verdicts "[[A]]" / "[[B]]"
THREE = ["Gorgeous, lovely, stunning.", "Sorry, I cannot answer this.", "Pretty and elegant, thanks!"]


class Reference:
    """A judge run the plain way: the judge prompt rendered from the documented format, one forward per verdict
    (``logp(v) = sum_t log_softmax(logits)[v_t]``), one ``generate`` per prompt."""

    def __init__(self, path: str, spec: JudgeSpec):
        self.spec = spec
        self.tok = AutoTokenizer.from_pretrained(path)
        config = json.loads((Path(path) / "config.json").read_text())
        attention = {"attn_implementation": "eager"} if config.get("attn_logit_softcapping") else {}
        named = getattr(transformers, config["architectures"][0])  # the class the checkpoint names (vision included)
        self.model = named.from_pretrained(path, dtype=torch.float32, **attention).eval()

    def messages(self, context: list[dict], *responses: str) -> list[dict]:
        prompt = context[0]["content"] if len(context) == 1 else "\n\n".join(
            f"{m['role'].capitalize()}: {m['content']}" for m in context)
        text = self.spec.template.replace("{prompt}", prompt)
        for name, response in zip(("{response_a}", "{response_b}") if len(responses) == 2 else ("{response}",),
                                  responses):
            text = text.replace(name, response)
        return ([{"role": "system", "content": self.spec.system}] if self.spec.system else []) + \
            [{"role": "user", "content": text}]

    def ids(self, context, *responses) -> list[int]:
        messages = self.messages(context, *responses)
        kwargs = {} if self.spec.thinking is None else {"enable_thinking": self.spec.thinking}
        try:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        except Exception:  # a template without a system role (Mistral): the system text opens the user turn
            folded = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}]
            text = self.tok.apply_chat_template(folded, tokenize=False, add_generation_prompt=True, **kwargs)
        return self.tok(text + self.spec.answer_prefix, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def judgement(self, ids: list[int]) -> float:
        if self.spec.readout == "generate":
            return self.spec.verdict(self.generate(ids))[0]
        logps = []
        for verdict in self.spec.verdicts:
            v = self.tok.encode(verdict, add_special_tokens=False)
            logits = self.model(torch.tensor([ids + v])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            logps.append(sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(v)))
        top = max(logps)
        weights = [math.exp(lp - top) for lp in logps]
        return sum(w * value for w, value in zip(weights, self.spec.verdicts.values())) / sum(weights)

    @torch.no_grad()
    def generate(self, ids: list[int]) -> str:
        stops = self.model.generation_config.eos_token_id
        stops = [stops] if isinstance(stops, int) else list(stops)
        out = self.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=self.spec.max_new_tokens,
                                  eos_token_id=stops, pad_token_id=self.tok.pad_token_id or stops[0])[0, len(ids):]
        tokens = out.tolist()
        end = next((j for j, t in enumerate(tokens) if t in stops), len(tokens))
        return self.tok.decode(tokens[:end], skip_special_tokens=False)

    def compare(self, context, a, b) -> float:
        return (self.judgement(self.ids(context, a, b)) + 1 - self.judgement(self.ids(context, b, a))) / 2


def _context(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [m for m in prompt]


@pytest.fixture(scope="module")
def judges(tiny):
    cache, made = {}, []

    def get(layout, spec, engine="transformers", **options):
        key = (layout, spec, engine, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = engines.load(tiny(layout), engine, kind="genrm", judge=spec, **options)
            made.append(cache[key])
        return cache[key]

    yield get
    for rm in made:
        engines.close(rm)


# ------------------------------------------------------------------------------------------- logit readout
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pointwise_logit_judge_matches_one_forward_per_verdict(layout, tiny, judges):
    ref = Reference(tiny(layout), POINTWISE)
    rm = judges(layout, POINTWISE)
    assert rm.kind == "genrm" and rm.pointwise
    prompts = [SINGLE] * len(CANDIDATES) + [MULTI_SYS] * 2
    responses = CANDIDATES + CANDIDATES[:2]
    got = rm.score(prompts, responses)
    want = [ref.judgement(ref.ids(_context(p), r)) for p, r in zip(prompts, responses)]
    assert max(abs(g - w) for g, w in zip(got, want)) < ATOL, (got, want)
    assert max(want) > 2 * min(want)  # the judgement depends on the response


@pytest.mark.parametrize("layout", ["genrm_qwen3", "policy", "genrm_gemma2", "genrm_qwen35"])
def test_pairwise_logit_judge_compares_both_orders(layout, tiny, judges):
    ref = Reference(tiny(layout), PAIRWISE)
    assert all(len(ref.tok.encode(v, add_special_tokens=False)) > 1 for v in PAIRWISE.verdicts)  # multi-token
    rm = judges(layout, PAIRWISE)
    assert not rm.pointwise
    a, b = [THREE[0], THREE[1], ""], [THREE[2], THREE[0], THREE[1]]
    got = rm.compare([SINGLE, SINGLE, MULTI_SYS], a, b)
    want = [ref.compare(_context(p), x, y) for p, x, y in zip([SINGLE, SINGLE, MULTI_SYS], a, b)]
    assert max(abs(g - w) for g, w in zip(got, want)) < ATOL, (got, want)
    swapped = rm.compare([SINGLE], [b[0]], [a[0]])[0]
    assert abs(got[0] + swapped - 1) < ATOL  # position swap always: P(a beats b) + P(b beats a) = 1


@pytest.mark.parametrize("spec", [POINTWISE, PAIRWISE, PRESETS["qwen3-reranker"]], ids=lambda s: s.name)
@pytest.mark.parametrize("engine", engines.ENGINES)
def test_logit_judges_on_both_engines(spec, engine, tiny, judges):
    layout = "genrm_qwen3"
    ref = Reference(tiny(layout), spec)
    rm = judges(layout, spec, engine)
    if spec.pairwise:
        got = rm.compare([SINGLE, MULTI_SYS], THREE[:2], THREE[1:])
        want = [ref.compare(_context(p), x, y) for p, x, y in zip([SINGLE, MULTI_SYS], THREE[:2], THREE[1:])]
    else:
        got = rm.score([SINGLE] * 3, THREE)
        want = [ref.judgement(ref.ids(_context(SINGLE), r)) for r in THREE]
    assert max(abs(g - w) for g, w in zip(got, want)) < ATOL, (got, want)


def test_ranking_rules_follow_the_compares(tiny, judges):
    rm = judges("genrm_qwen3", PAIRWISE)
    cands = THREE + ["Lovely!"]
    pair = {(i, j): rm.compare([SINGLE], [cands[i]], [cands[j]])[0] for i in range(4) for j in range(4) if i != j}
    robin = rm.rank(SINGLE, cands, method="round_robin")
    assert robin.comparisons == 6
    for i in range(4):
        want = sum(pair[(i, j)] for j in range(4) if j != i) / 3
        assert abs(robin.scores[i] - want) < ATOL
    circle = rm.rank(SINGLE, cands, method="circular")
    assert circle.comparisons == 4 and set(circle.wins) == {(0, 1), (1, 2), (2, 3), (3, 0)}
    for i in range(4):
        want = (pair[(i, (i + 1) % 4)] + pair[(i, (i - 1) % 4)]) / 2
        assert abs(circle.scores[i] - want) < ATOL
    knockout = rm.rank(SINGLE, cands, method="tournament")
    assert knockout.comparisons <= 2 * 4 - 3
    for (i, j), p in knockout.wins.items():
        assert abs(p - pair[(i, j)]) < ATOL
    beaten = [j if p >= 0.5 else i for (i, j), p in knockout.wins.items()]
    assert knockout.best not in beaten  # the champion won every match it played
    [many] = rm.rank_many([SINGLE], [cands], method="round_robin")
    assert many.scores == pytest.approx(robin.scores, abs=ATOL)


# ------------------------------------------------------------------------------------------- generate readout
GENERATED = [PRESETS["j1-pairwise"].with_options(max_new_tokens=40),
             PRESETS["j1-pointwise"].with_options(max_new_tokens=40)]


@pytest.mark.parametrize("spec", GENERATED, ids=lambda s: s.name)
@pytest.mark.parametrize("engine", engines.ENGINES)
def test_generate_readout_is_greedy_generate_and_the_parse(spec, engine, tiny, judges):
    """The trained tiny judge (it answers in the J1 formats): each judgement equals transformers' greedy
    ``generate`` of that judge prompt alone, parsed by the spec; vLLM's greedy answers are the same."""
    ref = Reference(tiny("genrm_trained"), spec)
    rm = judges("genrm_trained", spec, engine, deterministic=True)
    a, b = ["good love thanks lovely", "hate no cannot not"], ["hate cannot no", "lovely helpful honest good"]
    if spec.pairwise:
        got = rm.compare([SINGLE] * 2, a, b)
        want = [ref.compare(_context(SINGLE), x, y) for x, y in zip(a, b)]
    else:
        got = rm.score([SINGLE] * 4, a + b)
        want = [ref.judgement(ref.ids(_context(SINGLE), r)) for r in a + b]
    assert None not in want, "the trained judge answers in its format"
    assert got == want
    assert rm.metrics()["judge"]["no_verdict"] == 0


def test_a_vision_language_judge_generates_as_its_own_class(tiny, judges, tmp_path):
    """Qwen3.5 ships as ``Qwen3_5ForConditionalGeneration``, with gated delta-rule layers: loaded as the causal LM
    transformers maps it to, its greedy answers (batched, left-padded) are those of the class it names, one prompt at
    a time. A vision-language checkpoint transformers has no causal LM for is refused before its weights load."""
    spec = PRESETS["j1-pointwise"].with_options(max_new_tokens=12)
    ref = Reference(tiny("genrm_qwen35"), spec)
    rm = judges("genrm_qwen35", spec)
    responses = ["good love thanks", "hate no", "lovely helpful honest good thanks love", ""]
    ids = [rm.judge_ids(MULTI, r) for r in responses]
    assert ids == [ref.ids(MULTI, r) for r in responses]
    got = [texts[0] for texts in rm.generate(ids)]
    assert got == [ref.generate(i) for i in ids] and len(set(got)) > 1  # the answers depend on the response
    odd = tmp_path / "mistral3-judge"
    odd.mkdir()
    for f in Path(tiny("genrm_gemma3")).iterdir():
        (odd / f.name).symlink_to(f)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").unlink()
    (odd / "config.json").write_text(json.dumps(dict(config, model_type="mistral3",
                                                     architectures=["Mistral3ForConditionalGeneration"])))
    with pytest.raises(ValueError, match="no causal language model class in transformers.*engine='vllm'"):
        rmplugins.load_reward_model(str(odd), kind="genrm", judge=spec, device="cpu")


def test_batched_generation_answers_like_one_at_a_time(tiny, judges):
    spec = GENERATED[1]
    alone = judges("genrm_trained", spec, deterministic=True)
    batched = judges("genrm_trained", spec)
    responses = ["good love thanks", "hate no", "lovely helpful honest good thanks love", "cannot not", ""]
    assert batched.score([SINGLE] * 5, responses) == alone.score([SINGLE] * 5, responses)


def test_sampled_verdicts_depend_on_the_prompt_and_seed_not_on_what_is_judged_beside_them(tiny, judges):
    """temperature > 0: each judge prompt is sampled alone from the spec's seed (as vLLM's per-request seed), so a
    response's verdict is the same judged alone or in a batch (before: one stream for the batch, so the batch
    mates decided the draws)."""
    spec = PRESETS["j1-pointwise"].with_options(max_new_tokens=40, temperature=1.5, samples=2, seed=3)
    rm = judges("genrm_trained", spec)
    responses = ["good love thanks", "hate no", "lovely helpful honest good thanks love", "cannot not", "good"]
    alone = [rm.score([SINGLE], [r])[0] for r in responses]
    assert rm.score([SINGLE] * 5, responses) == alone
    assert rm.score([SINGLE] * 2, responses[3:1:-1]) == alone[3:1:-1]
    assert any(a is not None for a in alone)  # the trained judge answers in its format


def test_a_judge_prompt_longer_than_max_length_is_refused_as_too_long(tiny, judges):
    """A cut judge prompt would judge another question: the row is refused (kind too_long), the other judged."""
    spec = PRESETS["j1-pointwise"].with_options(max_new_tokens=6)
    short = judges("genrm_qwen3", spec).encode_row(rmplugins.inputs.to_conversation(SINGLE, "ok", 0))
    rm = judges("genrm_qwen3", spec, max_length=len(short) + 40)
    rows = rm.score_rows([SINGLE, SINGLE], ["ok", "word " * 200])
    assert rows.kinds.get(0) != "too_long" and rows.kinds[1] == "too_long"
    assert f"more than max_length={len(short) + 40}" in rows.reasons[1]


def test_no_verdict_is_none_with_its_reason_never_a_number(tiny, judges, caplog):
    spec = PRESETS["mt-bench"].with_options(max_new_tokens=6)  # an untrained judge writes no [[A]]/[[B]]
    rm = judges("genrm_qwen3", spec)
    with caplog.at_level("WARNING", logger="rmplugins"):
        assert rm.compare([SINGLE], THREE[:1], THREE[1:2]) == [None]
    assert "no verdict" in caplog.text
    rows = rm.compare_rows([SINGLE, SINGLE], THREE[:2], THREE[1:])
    assert rows.scores == [None, None] and "no verdict" in rows.reasons[0]
    assert rows.kinds == {0: "no_verdict", 1: "no_verdict"}
    assert rm.metrics()["judge"]["no_verdict"] >= 4
    with pytest.raises(ValueError, match="no verdict for any pair"):
        rm.rank(SINGLE, THREE, method="round_robin")
    with pytest.raises(ValueError, match="a tournament needs every match decided"):
        rm.rank(SINGLE, THREE, method="tournament")
    assert getattr(rm.rank_rows([SINGLE], [THREE])[0], "kind", None) == "no_verdict"
    rf = rmplugins.RewardFunction(rm, num_generations=3)
    rewards = rf(prompts=[SINGLE] * 3, completions=THREE)
    assert rewards == [None, None, None] and "no verdict" in rf.last_call["reasons"][0]
    pointwise = judges("genrm_qwen3", PRESETS["j1-pointwise"].with_options(max_new_tokens=6))
    rows = pointwise.score_rows([SINGLE], THREE[:1])
    assert rows.scores == [None] and "no verdict" in rows.reasons[0]
    with pytest.raises(ValueError, match="no verdict for any of these candidates"):  # not candidate 0 as the best
        pointwise.rank(SINGLE, THREE)
    assert isinstance(pointwise.rank_rows([SINGLE], [THREE])[0], ValueError)


# ------------------------------------------------------------------------------------------- specs and presets
def test_specs_are_checked_and_presets_render():
    with pytest.raises(ValueError, match=r"\{prompt\} and \{response\}"):
        JudgeSpec(template="no fields", verdicts={"a": 1, "b": 0})
    with pytest.raises(ValueError, match="at least two"):
        JudgeSpec(template="{prompt} {response}", verdicts={"Yes": 1})
    with pytest.raises(ValueError, match="extract .* or json_field"):
        JudgeSpec(template="{prompt} {response}", readout="generate")
    with pytest.raises(ValueError, match="has no group"):
        JudgeSpec(template="{prompt} {response}", readout="generate", extract=r"\d+")
    with pytest.raises(ValueError, match="preference for the first response"):
        JudgeSpec(template="{prompt} {response_a} {response_b}", verdicts={"A": 10, "B": 0})
    with pytest.raises(ValueError, match="every verdict has the same value"):  # a constant reward, before
        JudgeSpec(template="{prompt} {response}", verdicts={"yes": 1, "no": 1})
    with pytest.raises(ValueError, match="every verdict has the same value"):
        JudgeSpec(template="{prompt} {response}", readout="generate", extract="(yes)", verdicts={"yes": 1})
    with pytest.raises(ValueError, match="temperature > 0"):
        JudgeSpec(template="{prompt} {response}", readout="generate", extract="(x)", samples=4)
    # a JSON file's wrong types, by field name (before: 2.5 samples reached generate, a list of verdicts .items())
    generated = {"template": "{prompt} {response}", "readout": "generate", "extract": "(x)", "temperature": 1.0}
    for bad, message in [({"samples": 2.5}, "samples must be a whole number"),
                         ({"max_new_tokens": "lots"}, "max_new_tokens must be a whole number"),
                         ({"seed": -1}, "seed must be a whole number of at least 0"),
                         ({"temperature": "hot"}, "temperature must be a number"),
                         ({"thinking": "yes"}, "thinking must be true, false or null"),
                         ({"readout": "logits", "extract": None, "verdicts": ["yes", "no"]}, "verdicts must map")]:
        with pytest.raises(ValueError, match=message):
            JudgeSpec(**{**generated, **bad})
    spec = PRESETS["nemotron-genrm"]
    assert spec.verdict('thinking</think>```json\n{"score_1": 2, "score_2": 5, "ranking": 6}\n```') == (0.0, None)
    assert spec.verdict('{"score_1": 5, "score_2": 1, "ranking": 1}')[0] == 1.0
    assert spec.verdict("no json")[0] is None
    assert PRESETS["rm-r1-reasoning"].verdict("<think>[[B]] perhaps</think><answer>[[A]]</answer>") == (1.0, None)
    assert PRESETS["j1-pointwise"].verdict("<think>unfinished")[1].startswith("the judge's thinking did not end")
    # the final verdict, not a quote of a response (or of the format) written before it
    quoted = ("<type>Chat</type><eval><quote_B>I would answer <answer>[[B]]</answer> here</quote_B> is off topic"
              "</eval>\n\n<answer>[[A]]</answer>")
    assert PRESETS["rm-r1-instruct"].verdict(quoted) == (1.0, None)
    assert PRESETS["mt-bench"].verdict('B ends with "[[A]]", not an answer. Final verdict: [[B]]') == (0.0, None)
    assert PRESETS["j1-pointwise"].verdict("<think>ok</think>It says <score>10</score> of itself. <score>3</score>") \
        == (3.0, None)


def test_the_template_is_filled_once_and_every_field_it_holds_is_filled():
    # a prompt or a response holding a field's name is text the judge reads (before: it was filled in again, so a
    # question about f"{response}" showed the judge the answer inside the question, and a policy writing
    # "{response_b}" in its answer showed the judge the other answer as its own)
    spec = JudgeSpec(template="Q: {prompt}\nA: {response}", verdicts={"yes": 1, "no": 0})
    question = [{"role": "user", "content": "Why does print(f'{response}') fail?"}]
    assert spec.messages(question, "Because {prompt} and {response} are undefined.") == [
        {"role": "user", "content": "Q: Why does print(f'{response}') fail?\nA: Because {prompt} and {response} are "
                                    "undefined."}]
    pair = PRESETS["mt-bench-logits"].messages([{"role": "user", "content": "Hi"}], "See {response_b}.", "Hello!")
    assert "See {response_b}." in pair[-1]["content"] and pair[-1]["content"].count("Hello!") == 1
    # a field rmplugins does not fill would reach the judge as braces (before: accepted, sent as written)
    with pytest.raises(ValueError, match=r"template holds \{ref_answer_1\}, which rmplugins does not fill"):
        JudgeSpec(template="{prompt} {response} Reference: {ref_answer_1}", verdicts={"yes": 1, "no": 0})
    with pytest.raises(ValueError, match=r"system holds \{prompt\}"):
        JudgeSpec(template="{prompt} {response}", verdicts={"yes": 1, "no": 0}, system="Judge {prompt}.")
    with pytest.raises(ValueError, match=r"answer_prefix holds \{score\}"):
        JudgeSpec(template="{prompt} {response}", readout="generate", extract="(\\d)", answer_prefix="{score}")
    # other braces are text: a JSON format to answer in, and {{name}} as written (not an escape)
    literal = JudgeSpec(template='{prompt} {response} Answer {"score": 1} or {{name}}.', verdicts={"y": 1, "n": 0})
    assert literal.messages([{"role": "user", "content": "q"}], "r")[0]["content"] == \
        'q r Answer {"score": 1} or {{name}}.'


def test_verdicts_that_begin_one_another_in_tokens_are_refused_before_the_weights_load(tiny, tmp_path):
    # p("1") read from the logits already counts every "10" where digits are tokens of their own (the tiny Qwen3
    # judge's vocabulary, Qwen's and Gemma's): renormalised as separate answers, the scale would lean to "1"
    tokenizer = AutoTokenizer.from_pretrained(tiny("genrm_qwen3"))
    assert tokenizer.encode("10", add_special_tokens=False)[:1] == tokenizer.encode("1", add_special_tokens=False)
    unreadable = tmp_path / "judge"  # weights of a dtype nobody reads: a check after they load is never reached
    unreadable.mkdir()
    for f in Path(tiny("genrm_qwen3")).iterdir():
        data = f.read_bytes()
        if f.name.endswith(".safetensors"):
            end = 8 + int.from_bytes(data[:8], "little")
            header = data[8:end]
            for dtype in (b'"BF16"', b'"F32"', b'"F16"'):
                header = header.replace(dtype, b'"' + b"Q" * (len(dtype) - 2) + b'"')
            data = data[:8] + header + data[end:]
        (unreadable / f.name).write_bytes(data)
    digits = JudgeSpec(template="{prompt} {response}", verdicts={str(i): i for i in range(1, 11)})
    with pytest.raises(ValueError, match=r"verdicts '1' and '10' tokenize as .* begin the second's"):
        rmplugins.load_reward_model(str(unreadable), kind="genrm", judge=digits)
    with pytest.raises(ValueError, match=r"verdicts 'Yes' and 'Yes.' tokenize"):
        rmplugins.load_reward_model(str(unreadable), kind="genrm", judge=POINTWISE.with_options(
            verdicts={"Yes": 1, "Yes.": 0, "No": 0}))
    # the same scale in brackets is disjoint in tokens, and a generating judge reads text, not token sequences
    bracketed = digits.with_options(verdicts={f"[[{i}]]": i for i in range(1, 11)})
    assert len(rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", judge=bracketed).score(["q"], ["a"])) == 1
    with pytest.raises(Exception, match="(?i)dtype|deserializ|QQQ|QQ"):  # past the check: the weights do not load
        rmplugins.load_reward_model(str(unreadable), kind="genrm", judge=digits.with_options(
            readout="generate", extract=r"(\d+)", verdicts=None))


def test_a_think_block_opened_by_the_prompt_must_close_before_a_verdict_is_read(tiny, judges):
    """DeepSeek-R1 distills' templates (RM-R1's reasoning judges) end the generation prompt with ``<think>``: the
    answer has no opening tag, and one cut by max_new_tokens inside its thinking was read for a verdict its
    reasoning wrote. A ``<think>`` quoted inside a non-thinking judge's answer no longer hides its verdict."""
    from rmplugins.testing import QWEN3_CHAT_TEMPLATE

    spec = PRESETS["rm-r1-reasoning"]
    cut = "Chatbot A looks right, so <answer>[[A]]</answer> perhaps; but the units in B"
    assert spec.verdict(cut)[0] == 1.0  # no think block in sight: read as written
    value, reason = spec.verdict(cut, thinking_opened=True)
    assert value is None and reason.startswith("the judge's thinking did not end")
    assert spec.verdict(cut + "... B is right.\n</think>\n\n<answer>[[B]]</answer>", thinking_opened=True) == \
        (0.0, None)
    assert PRESETS["mt-bench"].verdict("B begins with <think> and never closes it. [[A]]") == (1.0, None)
    # the judge prompt's own end tells: the checkpoint's template (no), the same template opening a think block (yes)
    opening = QWEN3_CHAT_TEMPLATE.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>\n'")
    assert opening != QWEN3_CHAT_TEMPLATE
    plain, thinking = judges("genrm_qwen3", spec), judges("genrm_qwen3", spec, chat_template=opening)
    context = _context("Name a colour.")
    assert not plain.opens_thinking(plain.judge_ids(context, "Blue.", "Red."))
    assert thinking.opens_thinking(thinking.judge_ids(context, "Blue.", "Red."))


def test_a_gpt_oss_judge_is_read_from_its_final_channel():
    """GPT-OSS answers in the harmony format (openai-cookbook's "OpenAI harmony response format"): reasoning in the
    analysis channel, then the final channel. Its reasoning's verdicts are never read; an answer cut before the final
    channel has none (before, the last [[A]] of the reasoning was taken)."""
    spec = PRESETS["mt-bench"]
    reasoning = "<|channel|>analysis<|message|>At first [[A]] seems better, but B has the units right."
    final = "<|end|><|start|>assistant<|channel|>final<|message|>Assistant B is more accurate. [[B]]"
    assert spec.verdict(reasoning + final) == (0.0, None)
    assert spec.verdict(reasoning + final + "<|end|>") == (0.0, None)
    value, reason = spec.verdict(reasoning)
    assert value is None and "harmony final channel" in reason
    assert spec.verdict("<|channel|>final<|message|>[[A]]") == (1.0, None)  # low reasoning effort: final only
    assert spec.verdict("[[A]] and a quoted <|channel|> marker") == (1.0, None)  # not harmony: read as written


@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"nemotron-genrm"}))
def test_every_preset_builds_its_judge_prompt(name, tiny, judges):
    rm = judges("genrm_qwen3", PRESETS[name])
    responses = ("Blue.", "A fruit.") if PRESETS[name].pairwise else ("Blue.",)
    ids = rm.judge_ids(_context("Name a colour."), *responses)
    text = rm.tokenizer.decode(ids)
    assert "Name a colour." in text and all(r in text for r in responses)


def test_nemotron_genrm_takes_the_responses_as_roles(tiny, judges):
    spec = PRESETS["nemotron-genrm"].with_options(max_new_tokens=4)
    rm = judges("genrm_nemotron", spec)
    text = rm.tokenizer.decode(rm.judge_ids(_context("Name a colour."), "Blue.", "A fruit."))
    assert "<|im_start|>response_1\nBlue.<|im_end|>" in text and "<|im_start|>response_2\nA fruit." in text
    # Qwen3's template renders no such roles: refused when the judge loads, not judged empty (nor, on a server,
    # refused request by request after /health said ok)
    with pytest.raises(ValueError, match="did not render the response"):
        judges("genrm_qwen3", spec)


def test_a_judge_is_never_guessed(tiny):
    with pytest.raises(ValueError, match="plain causal language model.*kind='genrm' and judge=PRESET"):
        rmplugins.load_reward_model(tiny("genrm_qwen3"))
    with pytest.raises(ValueError, match="kind='genrm' needs judge="):
        rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm")
    with pytest.raises(ValueError, match="judge= is an option of generative judges"):
        rmplugins.load_reward_model(tiny("bt_llama3"), judge="qwen3-reranker")
    with pytest.raises(ValueError, match="a preset name"):
        rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", judge="no-such-preset")


def test_a_judge_spec_from_a_json_file(tiny, tmp_path):
    path = tmp_path / "my-judge.json"
    path.write_text(json.dumps(POINTWISE.as_json()))
    rm = rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", judge=str(path), device="cpu")
    assert rm.spec.name == "yes-no" and rm.spec.verdicts == POINTWISE.verdicts
    path.write_text(json.dumps({"template": "{prompt} {response}", "verdicts": {"y": 1, "n": 0}, "colour": 1}))
    with pytest.raises(ValueError, match="unknown fields"):
        rmplugins.load_reward_model(tiny("genrm_qwen3"), kind="genrm", judge=str(path))


# ------------------------------------------------------------------------------------------- everywhere else
@pytest.mark.slow
def test_grpo_step_with_a_pairwise_judge(tiny, tmp_path):
    from test_trl_trainers import _grpo_one_step

    rf = rmplugins.RewardFunction(tiny("genrm_trained"), kind="genrm", judge="j1-pairwise", num_generations=2,
                                  device="cpu")
    assert rf.method == "round_robin"
    logs = _grpo_one_step(tiny, tmp_path, [rf])
    assert f"rewards/{rf.__name__}/mean" in logs


def test_the_server_answers_with_the_judge(tiny, judges):
    import httpx

    from rmplugins.serving import BackgroundServer, create_app

    rm = judges("genrm_qwen3", PAIRWISE)
    with BackgroundServer(create_app(rm)) as server:
        answer = httpx.post(server.url + "/score", json={"prompts": [SINGLE, SINGLE], "completions": THREE[:2],
                                                           "references": THREE[1:]}, timeout=60).json()
        metrics = httpx.get(server.url + "/metrics.json", timeout=30).json()
    want = rm.compare([SINGLE, SINGLE], THREE[:2], THREE[1:])
    assert answer["rewards"] == pytest.approx(want, abs=ATOL)
    assert metrics["judge"]["judged"] >= 8 and metrics["judge"]["no_verdict"] == 0


@pytest.mark.slow
def test_a_recipe_iteration_ranked_by_a_judge(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Say something nice.", "Hello?")))
    out = tmp_path / "run"
    args = [sys.executable, "-m", "rmplugins", "iterative-dpo", "--policy", tiny("policy"), "--reward-model",
            tiny("genrm_trained"), "--reward-kind", "genrm", "--judge", "j1-pairwise", "--prompts", str(prompts),
            "--output", str(out), "--iterations", "1", "--num-candidates", "3", "--max-new-tokens", "6",
            "--batch-size", "2", "--epochs", "1", "--max-length", "96", "--no-progress"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    scores = [json.loads(line) for line in (out / "iter-1" / "scores.jsonl").read_text().splitlines()]
    assert all(row["method"] == "round_robin" and row["comparisons"] == 3 for row in scores)
    assert (out / "iter-1" / "model" / "config.json").exists()
    bad = subprocess.run(args[:-1] + ["--judge", "qwen3-reranker", "--pair-rule", "tournament"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "does not apply to a 'genrm' reward model (pointwise" in bad.stderr


def test_a_recipe_whose_judge_gives_no_verdict_finishes_and_says_so(tiny, tmp_path):
    """An untrained judge writes no <score>: nothing is kept, the policy carries over, and the summary, the log and
    the table say that no candidate was scored (they raised on the missing mean before)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Say something nice.", "Hello?")))
    spec = tmp_path / "judge.json"
    spec.write_text(json.dumps({**PRESETS["j1-pointwise"].as_json(), "max_new_tokens": 4}))
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "rmplugins", "rejection-sampling", "--policy", tiny("policy"),
                          "--reward-model", tiny("genrm_qwen3"), "--reward-kind", "genrm", "--judge", str(spec),
                          "--prompts", str(prompts), "--output", str(out), "--iterations", "1", "--num-candidates",
                          "2", "--max-new-tokens", "4", "--backend", "hf", "--no-progress"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Logging error" not in res.stderr
    assert "4 candidates without a verdict" in res.stderr and "no best.jsonl kept" in res.stderr
    (row,) = [line.split() for line in res.stdout.splitlines() if line.strip().startswith("0 ")]
    assert row[-3:] == ["-", "-", "0/2"]
    summary = json.loads((out / "summary.json").read_text())["iterations"][0]
    assert summary["unscored"] == 4 and summary["reward_mean"] is None
