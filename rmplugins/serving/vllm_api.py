"""vLLM's ``POST /classify`` and ``POST /pooling`` on ``rmplugins serve``, so clients written for a vLLM reward
server (verl's reward loop, AReaL's ``reward_model_service_url``) get every family unchanged.

Requests and answers follow vLLM's protocol classes (``vllm/entrypoints/pooling/classify/protocol.py`` and
``pooling/protocol.py``): the completion form ``{"model", "input": str | [str] | [ids] | [[ids]],
"use_activation", "add_special_tokens"}`` or the chat form ``{"model", "messages": [...]}``; the answer is a
``ClassificationResponse`` ``{id, object: "list", created, model, data: [{index, label, probs, num_classes}],
usage}`` or a ``PoolingResponse`` ``{..., data: [{index, object: "pooling", data}]}``; errors are vLLM's
``ErrorResponse`` ``{"error": {message, type, param, code}}``.

An input text is a whole conversation rendered with a chat template: the reward model's own (what verl sends: the
RM template applied to the prompt and the rollout, the BOS text dropped), else the policy's (``--policy-tokenizer``)
or a built-in one. The conversation is recovered and re-rendered in the family's own format, so ArmoRM, GPM or a
pairwise model scores it as its reference code does; text no template reproduces is refused, never scored raw.

What each family returns: ``/classify`` ``probs = [reward]`` (``num_classes`` 1; sigmoid unless ``use_activation``
is false, as vLLM's single-label classifiers do), so ``probs[-1]`` is the reward; ``/pooling`` ``data`` = the reward,
then the family's per-row values (ArmoRM: 19 objective rewards and 19 gating weights; a PRM: its step rewards).
With ``--group-size`` the reward is the sample's group reward. Extra fields ``group_id`` and ``sample_id`` (vLLM
accepts and ignores unknown fields) key a sample to its group.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from typing import Any

from ..inputs import to_conversation
from ..policy_template import PolicyTemplate, TemplateMismatch, split_without_tokenizer
from .protocol import RequestError, Sample, _with_ids

ENCODINGS = ("float", "base64")
ENDIANNESS = {"native": "=", "little": "<", "big": ">"}
RENDERED_HELP = ("a /classify or /pooling input must be a whole conversation rendered with a chat template (the "
                 "reward model's, as verl sends it, or the policy's with --policy-tokenizer), or use the chat form "
                 "{\"messages\": [..., {\"role\": \"assistant\", \"content\": ...}]}")


def model_template(tokenizer: Any) -> PolicyTemplate | None:
    """The reward model's own chat template as a parser, or None (PairRM's DeBERTa has none)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return PolicyTemplate(tokenizer, name="the reward model")
    except ValueError:
        return None


class VLLMRequests:
    """vLLM request bodies -> samples (plus the options the answer needs); samples' results -> vLLM answers."""

    def __init__(self, parser: Any, tokenizer: Any, model_name: str | None):
        self.parser, self.tokenizer = parser, tokenizer
        self.template = model_template(tokenizer)
        self.model_name = model_name or "reward-model"

    # ---------------------------------------------------------------- requests
    def classify(self, data: Any) -> tuple[list[Sample], dict]:
        return self._parse(data, pooling=False)

    def pooling(self, data: Any) -> tuple[list[Sample], dict]:
        return self._parse(data, pooling=True)

    def _parse(self, data: Any, pooling: bool) -> tuple[list[Sample], dict]:
        if not isinstance(data, dict):
            raise RequestError(400, "the body must be a JSON object with 'input' or 'messages'")
        if "normalize" in data:  # vLLM refuses it the same way
            raise RequestError(400, "Parameter `normalize` was removed; use `use_activation` instead.")
        activation = data.get("use_activation")
        if activation is not None and not isinstance(activation, bool):
            raise RequestError(400, "use_activation must be true, false or null")
        special = data.get("add_special_tokens", "messages" not in data)
        options: dict[str, Any] = {"use_activation": activation is not False, "pooling": pooling}
        if pooling:
            options["encoding"] = self._encoding(data)
        if ("messages" in data) == ("input" in data):
            raise RequestError(400, "send either 'input' (the completion form) or 'messages' (the chat form)")
        if "messages" in data:
            samples = [self._chat(data["messages"])]
            options["tokens"] = [self._count(samples[0])]
        else:
            texts, tokens = self._inputs(data["input"], bool(special))
            self.parser._check_count(len(texts))
            samples = [self._rendered(text, i) for i, text in enumerate(texts)]
            options["tokens"] = tokens or [len(self.tokenizer(t, add_special_tokens=bool(special))["input_ids"])
                                           for t in texts]
        return _with_ids(samples, data), options

    def _encoding(self, data: dict) -> tuple[str, str]:
        encoding = data.get("encoding_format", "float")
        if encoding not in ENCODINGS:
            raise RequestError(400, f"encoding_format {encoding!r}: rmplugins serve answers 'float' or 'base64'")
        if data.get("embed_dtype", "float32") != "float32":
            raise RequestError(400, "embed_dtype: rmplugins serve encodes rewards as float32")
        endianness = data.get("endianness", "native")
        if endianness not in ENDIANNESS:
            raise RequestError(400, f"endianness must be one of {list(ENDIANNESS)}")
        return encoding, endianness

    def _inputs(self, value: Any, special: bool) -> tuple[list[str], list[int] | None]:
        """The texts of ``input`` and, for token ids, their exact counts (texts are counted after parsing)."""
        if isinstance(value, str):
            return [value], None
        if not isinstance(value, list) or not value:
            raise RequestError(400, "'input' must be a string, a list of strings, a list of token ids or a list "
                                    "of lists of token ids (and not empty)")
        if all(isinstance(v, str) for v in value):
            return list(value), None
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            value = [value]
        if not all(isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
                   for v in value):
            raise RequestError(400, "'input' mixes strings and token ids, or holds an empty or non-integer list")
        size = len(self.tokenizer)
        for i, ids in enumerate(value):
            if min(ids) < 0 or max(ids) >= size:
                raise RequestError(400, f"input {i}: token ids must lie in [0, {size}) (the reward model's "
                                        "vocabulary)")
        return [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in value], [len(v) for v in value]

    def _chat(self, messages: Any) -> Sample:
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list of chat messages")
        if not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise RequestError(400, "the last message must be the assistant's response: a reward model scores a "
                                    "response, so the chat form ends with {\"role\": \"assistant\", ...}")
        try:
            conversation = to_conversation(messages[:-1], messages[-1].get("content"), 0)
        except ValueError as err:
            raise RequestError(400, str(err)) from None
        sample = Sample([dict(m) for m in conversation.context], conversation.response)
        self.parser._check_size(sum(len(m["content"]) for m in sample.messages) + len(sample.response), 0)
        return sample

    def _rendered(self, text: str, index: int) -> Sample:
        self.parser._check_size(len(text), index)
        if self.template is not None:
            try:
                messages, response = self.template.split(text, None)
                return Sample(messages, response, recovered=1.0)
            except TemplateMismatch:
                pass
        if self.parser.template is not None:
            try:
                messages, response = self.parser.template.split(text, None)
                return Sample(messages, response, recovered=1.0)
            except TemplateMismatch:
                pass
        try:
            messages, response, builtin = split_without_tokenizer(text, None)
        except TemplateMismatch as err:
            self.parser.metrics.template_refused += 1
            raise RequestError(400, f"input {index}: {RENDERED_HELP} ({err})") from None
        return Sample(messages, response, recovered=1.0 if builtin else 0.0)

    def _count(self, sample: Sample) -> int:
        """Tokens of a chat-form conversation in the reward model's template (what a vLLM server reports as
        ``prompt_tokens``), or of its texts where the model has no template."""
        if self.template is not None:
            messages = sample.messages + [{"role": "assistant", "content": sample.response}]
            return len(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
        return sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"])
                   for t in [m["content"] for m in sample.messages] + [sample.response])

    # ---------------------------------------------------------------- answers
    def answer(self, results: list[dict], options: dict) -> dict:
        tokens = sum(options["tokens"])
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                 "prompt_tokens_details": None}
        created = int(time.time())
        if options["pooling"]:
            encoding, endianness = options["encoding"]
            data = [{"index": i, "object": "pooling", "data": _encode(r["vector"], encoding, endianness)}
                    for i, r in enumerate(results)]
            return {"id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": created, "model": self.model_name,
                    "data": data, "usage": usage}
        activate = options["use_activation"]
        data = [{"index": i, "label": "reward", "probs": [_sigmoid(r["score"]) if activate else r["score"]],
                 "num_classes": 1} for i, r in enumerate(results)]
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": created, "model": self.model_name,
                "data": data, "usage": usage}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _encode(vector: list[float], encoding: str, endianness: str) -> list[float] | str:
    if encoding == "float":
        return list(vector)
    packed = struct.pack(f"{ENDIANNESS[endianness]}{len(vector)}f", *vector)
    return base64.b64encode(packed).decode("ascii")


def error_body(status: int, reason: str) -> dict:
    """vLLM's ``ErrorResponse``."""
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    names = {401: "UnauthorizedError", 404: "NotFoundError", 408: "RequestTimeoutError", 413: "PayloadTooLargeError",
             503: "ServiceUnavailableError", 504: "GatewayTimeoutError"}
    return {"error": {"message": reason, "type": names.get(status, kind), "param": None, "code": status}}
