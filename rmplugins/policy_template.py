"""Recover the conversation and the response from text rendered with the *policy's* chat template.

OpenRLHF sends its remote reward server the policy-templated prompt (``prompts[i]``) and the prompt plus the
generated tokens decoded with special tokens kept (``query[i]``). A reward model with its own format (ArmoRM,
GPM, pair-PM, PairRM) must not score that text directly (OpenRLHF issues 242, 486): the messages have to be
recovered and re-rendered in the reward model's own format.

How: :class:`PolicyTemplate` renders a few probe conversations with sentinel contents through the policy's
template and learns the literal text around each turn (Llama-3 headers, ChatML ``<|im_start|>``, Mistral
``[INST]``, Gemma ``<start_of_turn>``...). A prompt is then split on those delimiters, and the split is
*verified* by re-rendering it with the same template: only a split that reproduces the prompt exactly is
accepted, so a template the probes misread is reported (:class:`TemplateMismatch`) rather than silently misparsed.
A system message that the template inserts by default (Qwen's) is dropped when the prompt renders the same
without it, so the reward model sees the dataset's conversation.

The plain fallback (:func:`plain_split`, used without a policy tokenizer): ``prompts[i]`` is the user's text
verbatim and the rest of ``query[i]`` is the response. It is right for raw-text prompts (no
``--data.apply_chat_template``) and wrong, as OpenRLHF's own server is, for chat-templated prompts.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("rmplugins.policy_template")

_SYS, _U1, _A1, _U2 = "RmpSentinelSysZq", "RmpSentinelUsrOneZq", "RmpSentinelAstOneZq", "RmpSentinelUsrTwoZq"


class TemplateMismatch(ValueError):
    """The text was not produced by this policy template (or by a way of using it the probes did not see)."""


def _split_once(text: str, marker: str, what: str) -> tuple[str, str]:
    if marker not in text:
        raise TemplateMismatch(f"the policy chat template dropped the {what} content when rendering a probe")
    head, tail = text.split(marker, 1)
    return head, tail


def strip_prefix_loose(text: str, prefix: str) -> str | None:
    """``text`` minus ``prefix``; exact when possible, else ignoring whitespace differences (a decode of the
    prompt tokens may add or drop spaces around special tokens). ``None`` when ``text`` does not start with it."""
    if text.startswith(prefix):
        return text[len(prefix):]
    i = j = 0
    while j < len(prefix):
        if prefix[j].isspace():
            j += 1
            continue
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text) or text[i] != prefix[j]:
            return None
        i += 1
        j += 1
    return text[i:]


def plain_split(query: str, prompt: str | None) -> tuple[list[dict], str]:
    """The documented fallback: ``prompt`` is the user's text, the rest of ``query`` the response."""
    if prompt is None:
        raise TemplateMismatch("no 'prompts' entry for this query: the plain mode needs prompts[i] to know "
                               "where the response starts")
    rest = strip_prefix_loose(query, prompt)
    if rest is None:
        raise TemplateMismatch("query[i] does not start with prompts[i], so the response cannot be separated "
                               "from the prompt (was the prompt truncated by the trainer?)")
    return [{"role": "user", "content": prompt}], rest


class PolicyTemplate:
    """Parses text rendered by ``tokenizer.apply_chat_template`` back into messages (see the module doc)."""

    def __init__(self, tokenizer: Any, name: str = "policy"):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the policy tokenizer {name!r} has no chat_template; without one the policy prompts "
                             "are plain text: leave --policy-tokenizer out to use the plain mode")
        self.tokenizer = tokenizer
        self.name = name
        base = self._render([{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
                             {"role": "user", "content": _U2}], True)
        self.start, rest = _split_once(base, _U1, "user")          # text before the first user turn
        self.user_end, rest = _split_once(rest, _A1, "assistant")  # user turn end + assistant header
        self.assistant_end, self.generation_suffix = _split_once(rest, _U2, "second user")
        if not self.user_end or not self.assistant_end:
            raise ValueError(f"cannot learn the turn delimiters of the chat template of {name!r}: turns are not "
                             "separated by any text; leave --policy-tokenizer out to use the plain mode")
        # A system message: where its text goes, when the template supports one at the start.
        self.system_start = self.system_end = None
        try:
            with_system = self._render([{"role": "system", "content": _SYS}, {"role": "user", "content": _U1},
                                        {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}],
                                       True)
            head, tail = with_system.split(_SYS, 1)
            sys_end, after = tail.split(_U1, 1)
            if base.split(_U1, 1)[1] == after and _U1 not in head:
                self.system_start, self.system_end = head, sys_end
        except Exception:  # template rejects or folds the system role: such prompts parse as user text
            pass
        # The end of the answer turn (stripped off generated responses): Llama-3 <|eot_id|>, ChatML <|im_end|>.
        try:
            closed = self._render([{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}], False)
            self.answer_end = closed.split(_A1, 1)[1] if _A1 in closed else ""
        except Exception:
            self.answer_end = ""
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        for attr in ("eos_token", "pad_token"):
            token = getattr(tokenizer, attr, None)
            if isinstance(token, str) and token:
                specials.add(token)
        self._trailers = sorted({t for t in (self.answer_end, self.answer_end.strip(), *specials) if t},
                                key=len, reverse=True)
        self.bos = getattr(tokenizer, "bos_token", None) or ""

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    # ------------------------------------------------------------------ prompt
    def _split_turns(self, body: str) -> list[dict]:
        messages, pos, role = [], 0, "user"
        while True:
            delimiter = self.user_end if role == "user" else self.assistant_end
            end = body.find(delimiter, pos)
            if end < 0:
                if role != "user":
                    raise TemplateMismatch("the prompt ends inside an assistant turn; a prompt must end with a "
                                           "user turn and the generation prompt")
                messages.append({"role": "user", "content": body[pos:]})
                return messages
            messages.append({"role": role, "content": body[pos:end]})
            pos, role = end + len(delimiter), ("assistant" if role == "user" else "user")

    def _candidates(self, prompt: str):
        if not prompt.endswith(self.generation_suffix):
            # Some decodes drop the generation prompt's trailing whitespace.
            stripped = self.generation_suffix.rstrip()
            if not (stripped and prompt.rstrip().endswith(stripped)):
                raise TemplateMismatch("the prompt does not end with the policy template's generation prompt "
                                       f"{self.generation_suffix!r}")
            prompt = prompt.rstrip()[: -len(stripped)] + self.generation_suffix
        core = prompt[: len(prompt) - len(self.generation_suffix)]
        if self.bos and self.start.startswith(self.bos) and not core.startswith(self.bos):
            core = self.bos + core  # rendered without the BOS text (verl drops it before /classify)
        if self.system_start is not None and core.startswith(self.system_start):
            rest = core[len(self.system_start):]
            cut = rest.find(self.system_end)
            if cut >= 0:
                system = {"role": "system", "content": rest[:cut]}
                turns = self._split_turns(rest[cut + len(self.system_end):])
                yield turns  # a system message the template adds by itself is not part of the conversation
                yield [system] + turns
        if core.startswith(self.start):
            yield self._split_turns(core[len(self.start):])

    def parse_prompt(self, prompt: str) -> list[dict]:
        """The messages (system?, user, assistant, ..., user) that render to ``prompt`` with the generation prompt."""
        targets = {prompt, prompt.rstrip()}
        if self.bos and not prompt.startswith(self.bos):
            targets.add(self.bos + prompt)
        for messages in self._candidates(prompt):
            try:
                rendered = self._render(messages, True)
            except Exception:
                continue
            if rendered in targets or rendered.rstrip() in targets:
                return messages
        raise TemplateMismatch(f"the prompt was not rendered by the chat template of {self.name!r} (no split of "
                               "it re-renders to the same text); check --policy-tokenizer names the policy")

    # ------------------------------------------------------------------ response
    def clean_response(self, response: str) -> str:
        """Drop the end-of-turn / EOS / padding tokens the decode keeps after the answer."""
        changed = True
        while changed and response:
            changed = False
            for trailer in self._trailers:
                if response.endswith(trailer):
                    response, changed = response[: -len(trailer)], True
                    break
        return response

    def split(self, query: str, prompt: str | None) -> tuple[list[dict], str]:
        """``(prompt messages, response)`` from OpenRLHF's ``query[i]`` and ``prompts[i]``.

        Without ``prompt`` (or when ``query`` does not start with it, e.g. the trainer cut the prompt), the
        response starts after the last generation prompt in ``query`` and the prompt is read from ``query``.
        """
        rest = strip_prefix_loose(query, prompt) if prompt is not None else None
        if rest is None and prompt is not None and self.bos and query.startswith(self.bos):
            rest = strip_prefix_loose(query[len(self.bos):], prompt)
        if rest is None:
            cut = query.rfind(self.generation_suffix)
            if cut < 0:
                raise TemplateMismatch("the query contains no generation prompt of the policy template "
                                       f"({self.generation_suffix!r}); it was not rendered by this policy")
            prompt, rest = query[: cut + len(self.generation_suffix)], query[cut + len(self.generation_suffix):]
        return self.parse_prompt(prompt), self.clean_response(rest)


def load_policy_template(path: str, option: str = "policy_tokenizer") -> PolicyTemplate:
    """The policy's tokenizer from a local directory or a hub id; a clear error naming ``option`` and the path when
    there is none (a missing directory is never sent to the hub as a repository name)."""
    from pathlib import Path

    from .chat import load_tokenizer

    text = str(path)
    local = Path(text).expanduser()
    if (text.startswith(("/", "./", "../", "~")) or local.exists()) and not local.is_dir():
        what = "not a directory" if local.exists() else "no such directory"
        raise ValueError(f"{option} {text}: {what}; give the policy's tokenizer directory (its tokenizer.json / "
                         "tokenizer_config.json) or a hub id")
    try:
        tokenizer = load_tokenizer(str(local) if local.is_dir() else text, f"{option} {text}")
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a hub id that cannot be fetched fails in many ways
        raise ValueError(f"{option} {text}: cannot load a tokenizer ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}); give the policy's tokenizer directory or a hub id "
                         "in the local cache") from None
    return PolicyTemplate(tokenizer, name=text)


# ---------------------------------------------------------------------------------------------- without a tokenizer
# Text that contains these was rendered with a chat template: scoring it as plain user text is the silent error
# this module exists to prevent.
TEMPLATE_MARKERS = ("<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>",
                    "[INST]", "[/INST]", "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>",
                    "<｜User｜>", "<｜Assistant｜>")

# The published templates of the policies most often trained (as their tokenizer_config.json renders them, minus
# date headers and default system prompts), each with the special tokens its decodes carry.
BUILTIN_TEMPLATES = {
    "llama-3": ("{% for m in messages %}{% set c = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
                "m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set c = bos_token + c %}{% endif %}"
                "{{ c }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
                {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                 "specials": ["<|end_of_text|>", "<|finetune_right_pad_id|>"]}),
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
               {"bos_token": "", "eos_token": "<|im_end|>", "specials": ["<|endoftext|>"]}),
    "mistral": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% elif m['role'] == 'assistant' %}"
                "{{ m['content'] + eos_token }}{% endif %}{% endfor %}",
                {"bos_token": "<s>", "eos_token": "</s>", "specials": []}),
    "gemma": ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else "
              "m['role'] %}{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
              {"bos_token": "<bos>", "eos_token": "<eos>", "specials": ["<end_of_turn>", "<pad>"]}),
}


class _TemplateOnly:
    """The part of a tokenizer :class:`PolicyTemplate` uses: a chat template and its special tokens."""

    def __init__(self, source: str, bos_token: str, eos_token: str, specials: list[str]):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.chat_template = source
        self._template = ImmutableSandboxedEnvironment().from_string(source)
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, None
        self.all_special_tokens = [t for t in (bos_token, eos_token, *specials) if t]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        if any(m["role"] not in ("user", "assistant") for m in messages) and "[INST]" in self.chat_template:
            raise TemplateMismatch("this template has no system role")
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token, eos_token=self.eos_token)


_builtin: dict[str, PolicyTemplate] = {}


def builtin_templates() -> dict[str, PolicyTemplate]:
    """The built-in policy templates, parsed once."""
    if not _builtin:
        for name, (source, tokens) in BUILTIN_TEMPLATES.items():
            _builtin[name] = PolicyTemplate(_TemplateOnly(source, **tokens), name=f"built-in {name}")
    return _builtin


def template_markers(*texts: str | None) -> list[str]:
    """The chat-template markers found in the texts (empty for plain text)."""
    return [m for m in TEMPLATE_MARKERS if any(t and m in t for t in texts)]


def split_without_tokenizer(query: str, prompt: str | None) -> tuple[list[dict], str, str | None]:
    """``(messages, response, template name)`` for text sent without a policy tokenizer: plain text as
    :func:`plain_split` (template ``None``); templated text through the built-in template that reproduces it
    exactly. Templated text no built-in template reproduces is refused (:class:`TemplateMismatch`): scored as
    plain text its reward would be silently wrong."""
    markers = template_markers(query, prompt)
    if not markers:
        messages, response = plain_split(query, prompt)
        return messages, response, None
    for name, template in builtin_templates().items():
        try:
            messages, response = template.split(query, prompt)
            return messages, response, name
        except TemplateMismatch:
            continue
    raise TemplateMismatch(
        f"the text was rendered with a chat template (it contains {', '.join(markers[:3])}) that none of the "
        f"built-in ones ({', '.join(BUILTIN_TEMPLATES)}) reproduces exactly; scored as plain text its reward would "
        "be wrong. Start the server with --policy-tokenizer <the policy's tokenizer> so the conversation is "
        "recovered with the policy's own template")
