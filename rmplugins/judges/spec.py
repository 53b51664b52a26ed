"""Generative judges: what a judge is asked and how its answer is read (:class:`JudgeSpec`), the published formats
(:data:`rmplugins.judges.presets.PRESETS`), and the parse of a generated verdict.

A judge is any causal LM asked, in its own chat template, about one response (pointwise: ``{prompt}`` and
``{response}`` in the template) or two (pairwise: ``{prompt}``, ``{response_a}``, ``{response_b}``). Its verdict is
read in one of two ways:

- ``readout="logits"``: each verdict's log-probability is the sum over its own tokens (the verdict text tokenized
  alone, appended after the prompt and ``answer_prefix``); the probabilities are renormalised over the verdicts and
  the judgement is the expected value of ``verdicts``;
- ``readout="generate"``: the judge writes (greedy unless ``temperature`` > 0), and the verdict is the first group of
  ``extract``'s last match in what it wrote after its thinking (after the last ``</think>``), mapped through
  ``verdicts`` or read as a number; or the ``json_field`` of the last JSON object it wrote. **No verdict found:
  None**, with the reason.

A pairwise judgement is the preference for the response shown first, in [0, 1]: the verdict values say it
(``{"[[A]]": 1, "[[B]]": 0}``), or ``scale`` maps a number onto it (Nemotron GenRM's ranking 1..6: ``scale=(1, 6)``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

from ..options import whole_number

FIELD = re.compile(r"\{[A-Za-z_]\w*\}")
PAIRWISE_FIELDS = ("{prompt}", "{response_a}", "{response_b}")
POINTWISE_FIELDS = ("{prompt}", "{response}")
READOUTS = ("logits", "generate")


@dataclass(frozen=True)
class JudgeSpec:
    """How to ask a judge and read its verdict (see the module doc). ``template`` is the user turn, rendered after
    ``system`` (when non-empty) with the checkpoint's own chat template and its generation prompt, then
    ``answer_prefix``; pairwise judges whose chat template takes the two responses as their own roles (Nemotron
    GenRM: ``response_1``, ``response_2``) set ``response_roles`` instead of a template. ``thinking``: the chat
    template's ``enable_thinking`` switch (Qwen3), None to leave the template's default. ``render_prompt``: how a
    multi-turn prompt becomes the ``{prompt}`` text (default :func:`transcript`). ``samples`` > 1 (with
    ``temperature`` > 0, seeded by ``seed``) averages the verdicts of that many generations."""

    template: str = ""
    verdicts: Mapping[str, float] | None = None
    system: str = ""
    answer_prefix: str = ""
    readout: str = "logits"
    extract: str | None = None
    json_field: str | None = None
    scale: tuple[float, float] | None = None
    response_roles: tuple[str, str] | None = None
    max_new_tokens: int = 1024
    samples: int = 1
    temperature: float = 0.0
    seed: int = 0
    thinking: bool | None = None
    render_prompt: Callable[[list[dict]], str] | None = field(default=None, compare=False)
    name: str = "custom"

    def __post_init__(self):
        self._check_types()
        if self.readout not in READOUTS:
            raise ValueError(f"JudgeSpec readout={self.readout!r}: choose one of {READOUTS}")
        fields = {f for f in PAIRWISE_FIELDS + POINTWISE_FIELDS if f in self.template}
        if self.response_roles is not None:
            if len(self.response_roles) != 2 or fields - {"{prompt}"}:
                raise ValueError("JudgeSpec response_roles: two role names, and no {response...} fields in the "
                                 "template (the responses are their own messages)")
        elif fields == set(PAIRWISE_FIELDS):
            pass
        elif fields != set(POINTWISE_FIELDS):
            raise ValueError("JudgeSpec template must hold {prompt} and {response} (a pointwise judge) or {prompt}, "
                             f"{{response_a}} and {{response_b}} (a pairwise one); it holds {sorted(fields)}")
        self._check_unfilled()
        if self.readout == "logits":
            if not self.verdicts or len(self.verdicts) < 2:
                raise ValueError("JudgeSpec readout='logits' needs verdicts={text: value, ...} with at least two "
                                 "verdicts to renormalise over")
            if self.extract or self.json_field:
                raise ValueError("extract and json_field read generated text: they apply to readout='generate'")
        else:
            if bool(self.extract) == bool(self.json_field):
                raise ValueError("JudgeSpec readout='generate' needs extract (a regex whose first group is the "
                                 "verdict) or json_field (a field of the last JSON object written), one of them")
            if self.extract:
                try:
                    groups = re.compile(self.extract).groups
                except re.error as err:
                    raise ValueError(f"JudgeSpec extract={self.extract!r} is not a regular expression: {err}") from None
                if groups < 1:
                    raise ValueError(f"JudgeSpec extract={self.extract!r} has no group: put the verdict in (...)")
        if self.verdicts is not None:
            for text, value in self.verdicts.items():
                if not isinstance(text, str) or not text or not isinstance(value, (int, float)) or \
                        not math.isfinite(value):
                    raise ValueError(f"JudgeSpec verdicts: {text!r} -> {value!r}; each verdict is non-empty text "
                                     "with a finite number")
            if len(set(self.verdicts.values())) < 2:  # every judgement would be that one value: a constant reward
                raise ValueError(f"JudgeSpec verdicts={dict(self.verdicts)!r}: every verdict has the same value, so "
                                 "every judgement would be that number; give the verdicts different values")
        if self.pairwise and self.scale is None and self.verdicts is not None and \
                any(not 0 <= v <= 1 for v in self.verdicts.values()):
            raise ValueError("a pairwise judge's verdict values are the preference for the first response, in [0, 1] "
                             "(e.g. {'[[A]]': 1, '[[B]]': 0}); give scale=(first much better, second much better) "
                             "to map other numbers")
        if self.pairwise and self.readout == "generate" and self.verdicts is None and self.scale is None:
            raise ValueError("a pairwise judge reading a number needs scale=(value: first much better, value: second "
                             "much better) to turn it into a preference")
        if self.scale is not None and (len(self.scale) != 2 or self.scale[0] == self.scale[1]):
            raise ValueError(f"JudgeSpec scale={self.scale!r}: two different numbers")
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"JudgeSpec temperature={self.temperature!r}: 0 (greedy) or more")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("JudgeSpec samples > 1 with temperature 0 would repeat one greedy answer: set "
                             "temperature > 0 (seeded by seed)")

    def _check_unfilled(self) -> None:
        """A ``{name}`` that rmplugins does not fill (a prompt ported from MT-bench's ``{ref_answer_1}`` or
        Prometheus' ``{orig_criteria}``, a ``{prompt}`` in ``system``) would reach the judge as those braces: refused.
        Braces are not escapes here (the template's fields are replaced as text, ``{{`` stays ``{{``), so
        ``{{name}}`` is left as written."""
        fields = PAIRWISE_FIELDS if self.pairwise else POINTWISE_FIELDS
        for name, filled in (("template", set(fields)), ("system", set()), ("answer_prefix", set())):
            text = getattr(self, name)
            unfilled = sorted({m.group(0) for m in FIELD.finditer(text) if m.group(0) not in filled
                               and not (text[m.start() - 1:m.start()] == "{" and text[m.end():m.end() + 1] == "}")})
            if unfilled:
                raise ValueError(f"JudgeSpec {name} holds {', '.join(unfilled)}, which rmplugins does not fill (it "
                                 f"fills {', '.join(fields)} in the template only): the judge would read the braces "
                                 "as written; write that text in itself")

    def _check_types(self) -> None:
        """Each field of its own type, so a JSON file's ``"samples": 2.5`` or ``"verdicts": ["yes", "no"]`` is refused
        here by name, not met later as a Python error inside a generation."""
        for name, least in (("max_new_tokens", 1), ("samples", 1), ("seed", 0)):
            whole_number(f"JudgeSpec {name}", getattr(self, name), least)
        for name in ("template", "system", "answer_prefix", "readout", "name"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"JudgeSpec {name} must be text, got {getattr(self, name)!r}")
        for name in ("extract", "json_field"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"JudgeSpec {name} must be text or None, got {getattr(self, name)!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise ValueError(f"JudgeSpec temperature must be a number (0: greedy), got {self.temperature!r}")
        if self.verdicts is not None and not isinstance(self.verdicts, Mapping):
            raise ValueError(f"JudgeSpec verdicts must map each verdict's text to its value, e.g. "
                             f'{{"yes": 1, "no": 0}}, got {self.verdicts!r}')
        if self.thinking is not None and not isinstance(self.thinking, bool):
            raise ValueError(f"JudgeSpec thinking must be true, false or null, got {self.thinking!r}")
        if self.scale is not None and (isinstance(self.scale, (str, Mapping)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in self.scale)):
            raise ValueError(f"JudgeSpec scale must be two numbers, got {self.scale!r}")
        if self.response_roles is not None and (isinstance(self.response_roles, (str, Mapping)) or not all(
                isinstance(r, str) and r for r in self.response_roles)):
            raise ValueError(f"JudgeSpec response_roles must be two role names, got {self.response_roles!r}")

    def __hash__(self) -> int:
        return hash(tuple((k, tuple(v.items()) if isinstance(v, Mapping) else v) for k, v in vars(self).items()
                          if k != "render_prompt"))

    @property
    def pairwise(self) -> bool:
        return self.response_roles is not None or "{response_a}" in self.template

    @property
    def pointwise(self) -> bool:
        return not self.pairwise

    def prompt_text(self, context: list[dict]) -> str:
        """The ``{prompt}`` text of a conversation before the judged answer."""
        return (self.render_prompt or transcript)(context)

    def messages(self, context: list[dict], *responses: str) -> list[dict]:
        """The chat the judge reads: ``system``, then the filled template as the user turn; or, with
        ``response_roles``, the conversation itself followed by the two responses in their roles."""
        if self.response_roles is not None:
            return [dict(m) for m in context] + [{"role": role, "content": text}
                                                 for role, text in zip(self.response_roles, responses)]
        names = ("{response_a}", "{response_b}") if self.pairwise else ("{response}",)
        fill = {"{prompt}": self.prompt_text(context), **dict(zip(names, responses))}
        # one pass: a prompt or response that itself holds "{response}" (a question about format strings, a policy
        # writing "{response_b}") is text the judge reads, never a field filled in again
        text = FIELD.sub(lambda m: fill.get(m.group(0), m.group(0)), self.template)
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": text}]

    def verdict(self, generated: str, thinking_opened: bool = False) -> tuple[float | None, str | None]:
        """(the judgement, None) from a generated answer, or (None, why) when it holds no verdict.
        ``thinking_opened``: the judge prompt itself ended with ``<think>`` (DeepSeek-R1 distills' templates), so
        the answer is thinking until its ``</think>``."""
        text, thinking_open = after_thinking(generated, thinking_opened)
        if thinking_open:
            return None, ("the judge's thinking did not end (no </think>, or no harmony final channel) within "
                          "max_new_tokens")
        if self.json_field:
            found = last_json_field(text, self.json_field)
            if found is None:
                return None, f"no JSON object with a numeric {self.json_field!r} in the answer"
            return self._value(found)
        # the last match: every preset's prompt asks for the final verdict at the end, and a judge that quotes a
        # response (RM-R1's <quote_A>) or the format it was given before it would be read by its quote otherwise
        matches = list(re.finditer(self.extract, text, flags=re.S))
        if not matches:
            return None, f"no match for {self.extract!r} in the answer"
        raw = matches[-1].group(1)
        if self.verdicts is not None:
            if raw not in self.verdicts:
                return None, f"the verdict {raw!r} is not one of {sorted(self.verdicts)}"
            return float(self.verdicts[raw]), None
        try:
            return self._value(float(raw))
        except ValueError:
            return None, f"the verdict {raw!r} is not a number"

    def _value(self, number: float) -> tuple[float | None, str | None]:
        if not math.isfinite(number):
            return None, f"the verdict {number} is not a finite number"
        if self.pairwise:  # a number on the spec's scale -> the preference for the first response
            best, worst = self.scale
            return min(1.0, max(0.0, (worst - number) / (worst - best))), None
        return number, None

    def with_options(self, **overrides) -> "JudgeSpec":
        """A copy with fields replaced (checked again)."""
        return replace(self, **overrides)

    def as_json(self) -> dict:
        """The spec as a JSON object (``render_prompt`` cannot be written; a spec that has one is refused)."""
        if self.render_prompt is not None:
            raise ValueError("a JudgeSpec with render_prompt (a function) has no JSON form")
        data = asdict(self)
        data.pop("render_prompt")
        return data


def transcript(context: list[dict]) -> str:
    """The default ``{prompt}`` text: a lone user turn as it is; otherwise one line block per message, ``System:``,
    ``User:``, ``Assistant:`` (or the role's name) then its text, separated by blank lines."""
    if len(context) == 1 and context[0]["role"] == "user":
        return context[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in context)


# GPT-OSS's harmony format: after a generation prompt ending "<|start|>assistant" the answer opens a channel,
# reasoning in "analysis", then "<|end|><|start|>assistant<|channel|>final<|message|>" and the answer itself.
HARMONY_CHANNEL, HARMONY_FINAL = "<|channel|>", "<|channel|>final<|message|>"


def after_thinking(text: str, opened: bool = False) -> tuple[str, bool]:
    """(the answer after the judge's thinking, whether a think block was opened and never closed). A block is
    opened by the answer's first words, or by the prompt (``opened``): an answer cut inside it holds no verdict, even
    where its reasoning already wrote one; a ``<think>`` quoted later in an answer opens nothing. A harmony answer
    (GPT-OSS: it opens a channel) is its final channel; cut before that channel it is reasoning, with no verdict."""
    if text.lstrip().startswith(HARMONY_CHANNEL):
        if HARMONY_FINAL not in text:
            return text, True
        return text.rsplit(HARMONY_FINAL, 1)[1].split("<|end|>")[0], False
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1], False
    return text, opened or text.lstrip().startswith("<think>")


def last_json_field(text: str, name: str) -> float | None:
    """The number under ``name`` in the last JSON object of ``text`` that has it (a fenced ```json block first),
    as NeMo-Gym's GenRM parser reads Nemotron GenRM's answer; None when there is none."""
    fenced = re.findall(r"```json\s*(.*?)```", text, flags=re.S | re.I)
    for chunk in fenced + [text]:
        found = None
        for obj in _json_objects(chunk):
            value = obj.get(name) if isinstance(obj, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found = float(value)
            elif isinstance(value, str):
                try:
                    found = float(value)
                except ValueError:
                    pass
        if found is not None:
            return found
    return None


def _json_objects(text: str) -> list:
    decoder = json.JSONDecoder()
    out, at = [], text.find("{")
    while at != -1:
        try:
            obj, end = decoder.raw_decode(text, at)
            out.append(obj)
            at = text.find("{", end)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
    return out
