"""OpenRLHF's remote reward protocol and the ``/score`` variant: request bodies -> samples, errors -> answers.

``POST /get_reward`` ``{"query": [text], "prompts": [text], "labels": [label]}``: OpenRLHF (0.11) rollout actors
send the policy-templated prompt and the prompt plus the generated text (special tokens kept). ``POST /score``
``{"prompts": [str | messages], "completions": [str | messages], "references": [str | null]}``: already separated
(the verl client). Every malformed body is a 4xx with a reason (:class:`RequestError`), never a 500.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

from ..inputs import text_of, to_conversation
from ..refusals import REJECTED as REJECTED_KIND
from ..refusals import kind_of
from .metrics import Metrics

logger = logging.getLogger("rmplugins.server")
PAIRWISE_HELP = ("judges pairs of responses and has no reward for a lone response: put a reference response in "
                 "the label (a plain string, or JSON {\"reference\": \"...\"}); the reward is then "
                 "P(response beats reference)")


class RequestError(Exception):
    """An answer with an HTTP status and a reason for the client; ``kind`` where it is a sample's refusal
    (:mod:`rmplugins.refusals`: sent beside the reason, for programs)."""

    def __init__(self, status: int, reason: str, kind: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.kind = status, reason, kind


REJECTED = "the reward model rejected this sample"


def refused(err: BaseException) -> bool:
    """Whether an error of scoring is the model's refusal of what it was given (a ValueError or TypeError from the
    model: too long, no verdict), not a fault (a broken forward, a bug: a 500, never a fallback reward)."""
    return isinstance(err, (ValueError, TypeError))


def refusal(err: BaseException) -> BaseException:
    """What a request gets for an error of its scoring: the model's refusal of a sample (:func:`refused`) as a 422
    with the reason and its kind; anything else as it is (a 500 at the route)."""
    if refused(err):
        return RequestError(422, f"{REJECTED}: {err}", kind_of(err))
    return err


def refusal_kind(err: BaseException) -> str:
    """The kind of a sample's refusal (:mod:`rmplugins.refusals`), as its 422 or 408 would say it."""
    return getattr(refusal(err), "kind", None) or REJECTED_KIND


@dataclass
class Sample:
    """One thing to score: prompt messages, the response, and (pairwise kinds) the reference response."""

    messages: list[dict]
    response: str
    reference: str | None = None
    recovered: float = 1.0  # 1 when the conversation was recovered with the policy template, else 0
    group_id: str | None = None   # the client's group id (--group-size); None: grouped by prompt
    sample_id: str | None = None  # the client's id of this sample, so a retry is known (--group-size)

    def cost(self) -> int:
        """Rough token count (4 characters a token) of what is this sample's own (the response, and the reference's
        pass for pairwise kinds), for the batch token budget; counting exactly would cost a tokenizer pass in the
        event loop. The prompt is :meth:`prompt_cost`, counted once per batch."""
        response = len(self.response) + (len(self.reference) if self.reference is not None else 0)
        return (response + (self.prompt_chars() if self.reference is not None else 0)) // 4 + 8

    def prompt_chars(self) -> int:
        return sum(len(m.get("content") or "") for m in self.messages)

    def prompt_key(self) -> int:
        return hash(json.dumps(self.messages, sort_keys=True, ensure_ascii=False))

    def prompt_cost(self) -> int:
        return self.prompt_chars() // 4


def default_sample_chars(max_length: int | None) -> int:
    """64 characters per token the model reads (text averages about 4): far above any sample the model can
    score in full, small enough that tokenizing it takes milliseconds."""
    return max(65536, 64 * int(max_length or 4096))


def parse_body(body: bytes, parse) -> list[Sample]:
    """JSON -> samples, with every malformed body a 4xx (never a 500): invalid UTF-8 or JSON, nesting deeper than
    Python's parser takes, numbers longer than Python converts."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "the body's JSON is nested too deeply") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise RequestError(400, f"the body's JSON has a value Python cannot read: {err}") from None
    return parse(data)


def reference_from_label(label: Any) -> str | None:
    """A reference response from an OpenRLHF label: a non-empty string, or JSON/dict with ``reference``
    (also ``response`` or ``chosen``). Anything else (``""``, numbers, ``None``) means no reference."""
    if isinstance(label, str):
        text = label.strip()
        if text.startswith("{"):
            try:
                label = json.loads(text)
            except json.JSONDecodeError:
                return label
        else:
            return label if text else None
    if isinstance(label, dict):
        for key in ("reference", "response", "chosen"):
            value = label.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, list) and value and isinstance(value[-1], dict):  # [{"role": "assistant", ...}]
                return str(value[-1].get("content") or "")
    return None


MAX_ID_CHARS = 256


def _id(value: Any, name: str, index: int) -> str | None:
    """A group or sample id: a string or an integer (JSON numbers from Python and Go clients), else refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RequestError(422, f"sample {index}: {name} must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise RequestError(422, f"sample {index}: {name} must have 1 to {MAX_ID_CHARS} characters")
    return text


def ids_field(data: dict, names: tuple[str, ...], n: int) -> list[str | None]:
    """One id per sample from the first of ``names`` present: a list with one entry per sample, or (one name
    without a plural ``s``) a single id for every sample of the request."""
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, list):
            if len(value) != n:
                raise RequestError(422, f"field {name!r} has {len(value)} entries for {n} samples: send one per "
                                        "sample")
            return [_id(v, name, i) for i, v in enumerate(value)]
        return [_id(value, name, i) for i in range(n)]
    return [None] * n


def _with_ids(samples: list[Sample], data: dict) -> list[Sample]:
    for sample, group, sid in zip(samples, ids_field(data, ("group_ids", "group_id"), len(samples)),
                                  ids_field(data, ("sample_ids", "sample_id"), len(samples))):
        sample.group_id, sample.sample_id = group, sid
    return samples


def partial_option(data: dict) -> dict:
    """``{"partial": bool}``: rmplugins' own clients ask for a null reward and its reason in ``errors`` where the
    model rejects a sample (a judge without a verdict), the others' rewards in the same answer, instead of a 422
    for the whole request; OpenRLHF's client never sends it and gets the 422."""
    partial = data.get("partial", False)
    if not isinstance(partial, bool):
        raise RequestError(422, f"field 'partial' must be true or false, got {partial!r}")
    return {"partial": partial}


def _list_field(data: dict, name: str, n: int | None, required: bool) -> list | None:
    value = data.get(name)
    if value is None:
        if required:
            raise RequestError(422, f"field {name!r} is missing: send a list with one entry per sample")
        return None
    if isinstance(value, str) and name in ("query", "prompts"):
        value = [value]
    if not isinstance(value, list):
        raise RequestError(422, f"field {name!r} must be a list, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise RequestError(422, f"field {name!r} has {len(value)} entries but 'query' has {n}: send one per sample")
    return value


class RequestParser:
    """Request bodies -> :class:`Sample` lists, every problem a :class:`RequestError` naming the sample. Recovers
    the conversation from policy-templated text (``policy_template``, else the built-in templates, else plain
    text), and takes the reference response from the label when the model needs one."""

    def __init__(self, *, kind: str, needs_reference: bool, max_length: int | None, metrics: Metrics,
                 policy_template: Any = None, max_samples: int = 256, max_sample_chars: int | None = None):
        self.kind, self.needs_reference, self.max_length = kind, needs_reference, max_length
        self.metrics, self.template = metrics, policy_template
        self.max_samples = max_samples
        self.max_sample_chars = max_sample_chars or default_sample_chars(max_length)
        self._warned_fallback = False
        self._warned_builtin: set[str] = set()

    def _reference(self, label: Any, index: int) -> str | None:
        if not self.needs_reference:
            return None
        reference = reference_from_label(label)
        if reference is None:
            raise RequestError(422, f"sample {index}: reward model kind {self.kind!r} {PAIRWISE_HELP}; "
                                    f"got label {label!r:.80}")
        return reference

    def _split(self, query: str, prompt: str | None, index: int) -> Sample:
        from ..policy_template import TemplateMismatch, split_without_tokenizer

        metrics = self.metrics
        if self.template is not None:
            try:
                messages, response = self.template.split(query, prompt)
                return Sample(messages, response, recovered=1.0)
            except TemplateMismatch as err:
                if not self._warned_fallback:
                    logger.warning("sample %d: could not recover the conversation with the policy template (%s); "
                                   "trying the plain mode and the built-in templates (logged once; counted in "
                                   "/metrics template_fallbacks)", index, err)
                    self._warned_fallback = True
        try:
            messages, response, builtin = split_without_tokenizer(query, prompt)
        except TemplateMismatch as err:
            metrics.template_refused += 1
            raise RequestError(422, f"sample {index}: {err}") from None
        if builtin is None:
            metrics.fallbacks += self.template is not None  # plain text although a policy template was given
            return Sample(messages, response, recovered=0.0)
        metrics.template_builtin[builtin] = metrics.template_builtin.get(builtin, 0) + 1
        if builtin not in self._warned_builtin:
            logger.warning("recovering chat-templated requests with the built-in %r template (no --policy-tokenizer "
                           "given, or it did not match); pass --policy-tokenizer for the policy's exact template "
                           "(logged once; counted in /metrics template_builtin)", builtin)
            self._warned_builtin.add(builtin)
        return Sample(messages, response, recovered=1.0)

    def openrlhf_samples(self, data: Any) -> tuple[list[Sample], dict]:
        if not isinstance(data, dict):
            raise RequestError(422, "the body must be a JSON object {\"query\": [...], \"prompts\": [...], "
                                    "\"labels\": [...]}")
        queries = _list_field(data, "query", None, True)
        if not queries:
            raise RequestError(422, "field 'query' is empty: send at least one sample")
        self._check_count(len(queries))
        prompts = _list_field(data, "prompts", len(queries), False)
        labels = _list_field(data, "labels", len(queries), False) or [""] * len(queries)
        samples = []
        for i, query in enumerate(queries):
            prompt = prompts[i] if prompts is not None else None
            if not isinstance(query, str) or (prompt is not None and not isinstance(prompt, str)):
                raise RequestError(422, f"sample {i}: 'query' and 'prompts' entries must be strings")
            label = labels[i]
            self._check_size(len(query) + (len(label) if isinstance(label, str) else 0), i)
            try:
                text_of(query, f"sample {i}")
            except ValueError as err:
                raise RequestError(422, str(err)) from None
            sample = self._split(query, prompt, i)
            sample.reference = self._reference(label, i)
            samples.append(sample)
        return _with_ids(samples, data), partial_option(data)

    def direct_samples(self, data: Any) -> tuple[list[Sample], dict]:
        """``/score``: ``{"prompts": [str | messages], "completions": [str], "references": [str | null]}``."""
        if not isinstance(data, dict):
            raise RequestError(422, "the body must be a JSON object {\"prompts\": [...], \"completions\": [...]}")
        prompts = _list_field(data, "prompts", None, True)
        if not prompts:
            raise RequestError(422, "field 'prompts' is empty: send at least one sample")
        self._check_count(len(prompts))
        completions = data.get("completions")
        if not isinstance(completions, list) or len(completions) != len(prompts):
            raise RequestError(422, "field 'completions' must be a list with one entry per prompt")
        references = data.get("references") or [None] * len(prompts)
        if not isinstance(references, list) or len(references) != len(prompts):
            raise RequestError(422, "field 'references' must be a list with one entry per prompt")
        samples = []
        for i, (p, c, r) in enumerate(zip(prompts, completions, references)):
            try:
                conversation = to_conversation(p, c, i)
            except ValueError as err:
                raise RequestError(422, str(err)) from None
            sample = Sample([dict(m) for m in conversation.context], conversation.response)
            sample.reference = self._reference(r if r is not None else "", i)
            self._check_size(sum(len(m["content"]) for m in sample.messages) + len(sample.response)
                             + len(sample.reference or ""), i)
            samples.append(sample)
        return _with_ids(samples, data), partial_option(data)

    def slime_samples(self, data: Any) -> list[Sample]:
        """slime's ``remote_rm``: ``{"prompt": str | messages, "response": str, "label": ...}``, one sample. A
        string prompt is the policy-templated prompt (recovered as OpenRLHF's ``prompts[i]`` is); the label is the
        reference response where a pairwise model needs one."""
        if not isinstance(data, dict):
            raise RequestError(422, "the body must be a JSON object {\"prompt\": ..., \"response\": ..., "
                                    "\"label\": ...}")
        prompt, response = data.get("prompt"), data.get("response")
        if not isinstance(response, str):
            raise RequestError(422, "field 'response' must be the generated text (a string)")
        if isinstance(prompt, str):
            self._check_size(len(prompt) + len(response), 0)
            sample = self._split(prompt + response, prompt, 0)
        elif isinstance(prompt, list):
            try:
                conversation = to_conversation(prompt, response, 0)
            except ValueError as err:
                raise RequestError(422, str(err)) from None
            sample = Sample([dict(m) for m in conversation.context], conversation.response)
            self._check_size(sum(len(m["content"]) for m in sample.messages) + len(sample.response), 0)
        else:
            raise RequestError(422, "field 'prompt' must be the prompt text or a list of chat messages")
        label = data.get("label")
        sample.reference = self._reference(label if label is not None else "", 0)
        return _with_ids([sample], data)

    def _check_size(self, chars: int, index: int) -> None:
        """Tokenizing a text costs its length even though the model reads only ``max_length`` tokens of it: one
        multi-megabyte sample would hold the scoring thread for seconds and starve every other client."""
        if chars > self.max_sample_chars:
            raise RequestError(413, f"sample {index} has {chars} characters; the limit is {self.max_sample_chars} "
                                    f"(--max-sample-chars): the reward model reads at most "
                                    f"{self.max_length or '?'} tokens of it")

    def _check_count(self, n: int) -> None:
        if n > self.max_samples:
            raise RequestError(413, f"{n} samples in one request; the limit is {self.max_samples} "
                                    "(--max-request-samples): split the request")
