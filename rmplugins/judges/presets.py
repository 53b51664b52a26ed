"""Published judge formats as ready :class:`JudgeSpec` presets, and :func:`judge_spec`, which turns a preset name, a
JSON file or a spec into a spec. Each preset's source is named beside it; docs/judges.md records the facts.

- ``qwen3-reranker``: pointwise, logits. Qwen3-Reranker's published prompt (its model card): the system message,
  ``<Instruct>/<Query>/<Document>`` in the user turn, thinking switched off (the assistant turn opens with an empty
  think block), P("yes") renormalised over "yes" and "no". The instruction is a reward's, not the card's search one.
- ``mt-bench``: pairwise, generate. FastChat's MT-Bench ``pair-v2`` judge as RewardBench uses it (no tie): an
  explanation, then ``[[A]]`` or ``[[B]]``. ``mt-bench-logits``: the same prompt with the verdict read at the start
  of the answer, for judges that answer with the verdict first.
- ``rm-r1-reasoning``, ``rm-r1-instruct``: pairwise, generate. RM-R1's evaluation prompts (RM-R1-UIUC/RM-R1,
  ``eval/reward-bench/rewardbench/generative.py``): the reasoning models (DeepSeek-distilled) get one user turn, the
  instruct models a system rubric; the verdict is ``<answer>[[A]]</answer>`` or ``<answer>[[B]]</answer>``.
- ``j1-pairwise``, ``j1-pointwise``: generate. The verdict formats of the J1 paper (arXiv 2505.10320): a think
  block, then ``[[A]]``/``[[B]]`` (pairwise) or ``<score>`` 0-10 (pointwise). J1's checkpoints and code are not
  published; the prompts follow the paper's seed prompt in substance.
- ``nemotron-genrm``: pairwise, generate. Qwen3-Nemotron GenRM as NeMo-Gym's ``genrm_compare`` calls it: the
  conversation, then the two responses as the chat template's ``response_1`` and ``response_2`` roles; the answer is
  JSON ``{"score_1", "score_2", "ranking"}``; the preference is read from ``ranking`` (1: response 1 much better ...
  6: response 2 much better), ``scale=(1, 6)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .spec import JudgeSpec

AB = {"A": 1.0, "B": 0.0}

MT_BENCH_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the "
    "user question displayed below. You should choose the assistant that follows the user's instructions and answers "
    "the user's question better. Your evaluation should consider factors such as the helpfulness, relevance, "
    "accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by comparing the two "
    "responses and provide a short explanation. Avoid any position biases and ensure that the order in which the "
    "responses were presented does not influence your decision. Do not allow the length of the responses to influence "
    "your evaluation. Do not favor certain names of the assistants. Be as objective as possible. After providing your "
    "explanation, output your final verdict by strictly following this format: \"[[A]]\" if assistant A is better, "
    "\"[[B]]\" if assistant B is better.")
MT_BENCH_TEMPLATE = (
    "[User Question]\n{prompt}\n\n[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's "
    "Answer]\n\n[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]")

RM_R1_REASONING_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the "
    "Client question displayed below. \n\n[Client Question]\n{prompt}\n\n[The Start of Chatbot A's Response]\n"
    "{response_a}\n[The End of Chatbot A's Response]\n\n[The Start of Chatbot B's Response]\n{response_b}\n"
    "[The End of Chatbot B's Response]\n\nOutput your final verdict at last by strictly following this format: "
    "'<answer>[[A]]</answer>' if Chatbot A is better, or '<answer>[[B]]</answer>' if Chatbot B is better.")
RM_R1_INSTRUCT_TEMPLATE = (
    "[Client Question]\n{prompt}\n\n[The Start of Chatbot A's Response]\n{response_a}\n[The End of Chatbot A's "
    "Response]\n\n[The Start of Chatbot B's Response]\n{response_b}\n[The End of Chatbot B's Response]")
RM_R1_INSTRUCT_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI Chatbots to the "
    "Client's question displayed below.\n\n"
    "First, classify the task into one of two categories: <type>Reasoning</type> or <type>Chat</type>.\n"
    "- Use <type>Reasoning</type> for tasks that involve math, coding, or require domain knowledge, multi-step "
    "inference, logical deduction, or combining information to reach a conclusion.\n"
    "- Use <type>Chat</type> for tasks that involve open-ended or factual conversation, stylistic rewrites, safety "
    "questions, or general helpfulness requests without deep reasoning.\n\n"
    "If the task is Reasoning:\n"
    "1. Solve the Client's question yourself and present your final answer within <solution>...</solution> tags.\n"
    "2. Evaluate the two Chatbot responses based on correctness, completeness, and reasoning quality, referencing your "
    "own solution.\n"
    "3. Include your evaluation inside <eval>...</eval> tags, quoting or summarizing the Chatbots using the following "
    "tags:\n"
    "   - <quote_A>...</quote_A> for direct quotes from Chatbot A\n"
    "   - <summary_A>...</summary_A> for paraphrases of Chatbot A\n"
    "   - <quote_B>...</quote_B> for direct quotes from Chatbot B\n"
    "   - <summary_B>...</summary_B> for paraphrases of Chatbot B\n"
    "4. End with your final judgment in the format: <answer>[[A]]</answer> or <answer>[[B]]</answer>\n\n"
    "If the task is Chat:\n"
    "1. Generate evaluation criteria (rubric) tailored to the Client's question and context, enclosed in "
    "<rubric>...</rubric> tags.\n"
    "2. Assign weights to each rubric item based on their relative importance.\n"
    "3. Inside <rubric>, include a <justify>...</justify> section explaining why you chose those rubric criteria and "
    "weights.\n"
    "4. Compare both Chatbot responses according to the rubric.\n"
    "5. Provide your evaluation inside <eval>...</eval> tags, using <quote_A>, <summary_A>, <quote_B>, and <summary_B> "
    "as described above.\n"
    "6. End with your final judgment in the format: <answer>[[A]]</answer> or <answer>[[B]]</answer>\n\n"
    "Important Notes:\n"
    "- Be objective and base your evaluation only on the content of the responses.\n"
    "- Do not let response order, length, or Chatbot names affect your judgment.\n"
    "- Follow the response format strictly depending on the task type.\n\n"
    "Your output must follow one of the two formats below:\n\n"
    "For Reasoning:\n<type>Reasoning</type>\n\n<solution> your own solution for the problem </solution>\n\n<eval>\n"
    "  include direct comparisons supported by <quote_A>...</quote_A> or <summary_A>...</summary_A>, and "
    "<quote_B>...</quote_B>, or <summary_B>...</summary_B>\n</eval>\n\n<answer>[[A/B]]</answer>\n\n"
    "For Chat:\n<type>Chat</type>\n\n<rubric>\n  detailed rubric items\n  <justify> justification for the rubric "
    "</justify>\n</rubric>\n\n<eval>\n  include direct comparisons supported by <quote_A>...</quote_A> or "
    "<summary_A>...</summary_A>, and <quote_B>...</quote_B>, or <summary_B>...</summary_B> tags\n</eval>\n\n"
    "<answer>[[A/B]]</answer>")

J1_PAIRWISE_TEMPLATE = (
    "You are given a user question and two responses from two AI assistants. Your task is to act as an impartial judge "
    "and evaluate which response better follows the user's instructions and provides a higher-quality answer. First, "
    "think carefully: lay out your evaluation criteria, work out what a good answer contains, and compare both "
    "responses against it. Avoid any position bias: the order of the responses must not affect your judgment.\n\n"
    "[User Question]\n{prompt}\n\n[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's "
    "Answer]\n\n[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]\n\n"
    "Think inside <think> and </think>, then output your final verdict: \"[[A]]\" if assistant A is better, "
    "\"[[B]]\" if assistant B is better.")
J1_POINTWISE_TEMPLATE = (
    "You are given a user question and a response from an AI assistant. Your task is to act as an impartial judge and "
    "evaluate how well the response follows the user's instructions and how good an answer it is. First, think "
    "carefully: lay out your evaluation criteria, work out what a good answer contains, and compare the response "
    "against it.\n\n[User Question]\n{prompt}\n\n[The Start of the Assistant's Answer]\n{response}\n[The End of the "
    "Assistant's Answer]\n\nThink inside <think> and </think>, then output a score from 0 to 10 as "
    "<score>your score</score>.")

PRESETS: dict[str, JudgeSpec] = {spec.name: spec for spec in (
    JudgeSpec(
        name="qwen3-reranker", readout="logits", verdicts={"yes": 1.0, "no": 0.0}, thinking=False,
        system="Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note "
               "that the answer can only be \"yes\" or \"no\".",
        template="<Instruct>: Given a user's request, judge whether the Document is a helpful and correct response "
                 "to it\n<Query>: {prompt}\n<Document>: {response}"),
    JudgeSpec(name="mt-bench", readout="generate", system=MT_BENCH_SYSTEM, template=MT_BENCH_TEMPLATE,
              extract=r"\[\[([AB])\]\]", verdicts=AB, max_new_tokens=2048),
    JudgeSpec(name="mt-bench-logits", readout="logits", system=MT_BENCH_SYSTEM, template=MT_BENCH_TEMPLATE,
              verdicts={"[[A]]": 1.0, "[[B]]": 0.0}),
    JudgeSpec(name="rm-r1-reasoning", readout="generate", template=RM_R1_REASONING_TEMPLATE,
              extract=r"<answer>\s*\[\[([AB])\]\]\s*</answer>", verdicts=AB, max_new_tokens=8192),
    JudgeSpec(name="rm-r1-instruct", readout="generate", system=RM_R1_INSTRUCT_SYSTEM,
              template=RM_R1_INSTRUCT_TEMPLATE, extract=r"<answer>\s*\[\[([AB])\]\]\s*</answer>", verdicts=AB,
              max_new_tokens=8192),
    JudgeSpec(name="j1-pairwise", readout="generate", template=J1_PAIRWISE_TEMPLATE, extract=r"\[\[([AB])\]\]",
              verdicts=AB, max_new_tokens=4096),
    JudgeSpec(name="j1-pointwise", readout="generate", template=J1_POINTWISE_TEMPLATE,
              extract=r"<score>\s*(-?\d+(?:\.\d+)?)\s*</score>", max_new_tokens=4096),
    JudgeSpec(name="nemotron-genrm", readout="generate", response_roles=("response_1", "response_2"),
              json_field="ranking", scale=(1.0, 6.0), max_new_tokens=16384),
)}


def judge_spec(judge: Any) -> JudgeSpec:
    """A :class:`JudgeSpec` from a spec, a preset name (:data:`PRESETS`) or a JSON file of spec fields."""
    if isinstance(judge, JudgeSpec):
        return judge
    if isinstance(judge, str) and judge in PRESETS:
        return PRESETS[judge]
    path = Path(str(judge)).expanduser()
    if isinstance(judge, (str, Path)) and path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"judge {judge}: cannot read the JSON spec ({type(err).__name__}: {err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"judge {judge}: the file must hold a JSON object of JudgeSpec fields")
        allowed = set(JudgeSpec.__dataclass_fields__) - {"render_prompt"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"judge {judge}: unknown fields {unknown}; JudgeSpec fields are {sorted(allowed)}")
        for key in ("scale", "response_roles"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        try:
            return JudgeSpec(**{"name": path.stem, **data})
        except (TypeError, ValueError) as err:
            raise ValueError(f"judge {judge}: {err}") from None
    raise ValueError(f"judge={judge!r}: give a JudgeSpec, a preset name ({', '.join(PRESETS)}) or a .json file of "
                     "JudgeSpec fields")
