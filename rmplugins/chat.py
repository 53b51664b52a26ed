"""Rendering conversations with a reward model's own chat template, with clear errors.

Reward models were trained on their own template; scoring policy-formatted text with them gives wrong scores
(OpenRLHF issues 242, 486). Every family renders messages through here.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("rmplugins")
_warned_system_merge: set[str] = set()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spm.model", "tokenizer_config.json")


def load_tokenizer(path: Any, name: str) -> Any:
    """``AutoTokenizer.from_pretrained(path)``, with an error that names the checkpoint and the missing files
    instead of transformers' advice to install sentencepiece or tiktoken."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if Path(path).is_dir() and not any((Path(path) / f).exists() for f in TOKENIZER_FILES[:4]):
        raise ValueError(f"{name}: the checkpoint directory {path} has no tokenizer files (none of "
                         f"{', '.join(TOKENIZER_FILES[:4])}); copy the model's tokenizer files next to its weights")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{name}: cannot load the tokenizer from {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:300]}); its tokenizer files are damaged or incomplete") from None


def load_chat_tokenizer(path: Any, name: str, chat_template: str | None = None) -> Any:
    """The checkpoint's tokenizer, with ``chat_template`` overriding its own; a clear error when it has none."""
    if chat_template is not None and (not isinstance(chat_template, str) or not chat_template.strip()):
        raise ValueError(f"{name}: chat_template must be the text of a Jinja chat template, got {chat_template!r:.80}")
    tokenizer = load_tokenizer(path, name)
    if chat_template:
        tokenizer.chat_template = chat_template
        check_template_keeps_text(tokenizer, name)
    require_chat_template(tokenizer, name)
    return tokenizer


def check_template_keeps_text(tokenizer: Any, name: str) -> None:
    """A given ``chat_template`` must write the messages' text: one that leaves a message out (``"hello"``, a wrong
    variable name) gave every conversation the same text, so one reward for everything. A template that cannot
    render a user and an assistant turn at all is left to the scoring call's error, which names the roles."""
    probe = [{"role": "user", "content": "RmpProbeQuestionZq"}, {"role": "assistant", "content": "RmpProbeAnswerZq"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - any template error: the scoring call reports it with its roles
        return
    missing = [m["role"] for m in probe if m["content"] not in str(text)]
    if missing:
        raise ValueError(f"{name}: the chat_template given leaves out the text of the {' and the '.join(missing)} "
                         f"message (a user and an assistant turn rendered as {str(text)[:120]!r}), so every "
                         "conversation would get one reward; the template must write each message's content")


def require_chat_template(tokenizer: Any, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"the tokenizer of {name} has no chat_template, so conversations cannot be rendered the way the model "
            "was trained; pass chat_template='<jinja template>' to load_reward_model or use the model's own tokenizer"
        )


def merge_system(messages: list[dict]) -> list[dict]:
    """Fold a leading system message into the first user turn (for formats without a system role)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system['content']}\n\n{rest[0]['content']}"
        return rest
    return [{"role": "user", "content": system["content"]}, *rest]


def render(tokenizer: Any, messages: list[dict], *, name: str = "model", add_generation_prompt: bool = False,
           chat_template: str | None = None, **template_kwargs) -> str:
    """``apply_chat_template(..., tokenize=False)``; a template that rejects the system role (Mistral-Instruct)
    is retried once with the system message folded into the first user turn, and that is logged once.
    ``template_kwargs`` reach the template (``enable_thinking`` for Qwen3's)."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             chat_template=chat_template, **template_kwargs)
    except Exception as err:  # jinja2 TemplateError from raise_exception, or a template bug
        if messages and messages[0]["role"] == "system":
            if name not in _warned_system_merge:
                logger.warning("%s: the chat template rejected a system message (%s); folding it into the first "
                               "user turn", name, err)
                _warned_system_merge.add(name)
            return render(tokenizer, merge_system(messages), name=name,
                          add_generation_prompt=add_generation_prompt, chat_template=chat_template, **template_kwargs)
        roles = [m["role"] for m in messages]
        raise ValueError(f"{name}: its chat template cannot render a conversation with roles {roles}: {err}") from err


def strip_bos(tokenizer: Any, text: str) -> str:
    """The reference pipelines drop the BOS string from rendered text so the tokenizer adds exactly one."""
    bos = getattr(tokenizer, "bos_token", None)
    return text.replace(bos, "") if bos else text
