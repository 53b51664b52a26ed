"""Turn the contract's prompt/completion forms into one shape: a conversation context plus a response.

Prompts are a ``str`` (one user turn) or a list of ``{"role", "content"}`` messages ending with a user turn
(a leading system message is allowed). Completions are a ``str`` or TRL's conversational form: a list of
assistant messages (tool calls and tool results in between are tolerated; the last message is the answer, and it
cannot itself be a tool call). Tool calls, tool-call ids and names, and earlier turns' reasoning reach the chat
template; the answer is its content.
Every family renders :class:`Conversation` in its own format, so this is the only place that validates input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

Message = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    """``context`` is every message before the scored answer; ``response`` is the answer text."""

    context: tuple[Message, ...]
    response: str

    @property
    def messages(self) -> list[Message]:
        return [dict(m) for m in self.context] + [{"role": "assistant", "content": self.response}]


# Fields a chat template renders besides role and content (an assistant's tool calls, a tool result's id and name,
# earlier turns' reasoning, as TRL's response parsing names it): passed on, so a template that writes them (Qwen3's
# <tool_call>) sees what the model card's apply_chat_template sees; families with formats of their own read the
# content alone, as their cards do.
TEMPLATE_FIELDS = ("tool_calls", "tool_call_id", "name", "reasoning_content", "thinking")  # (GPT-OSS: thinking)


def _plain(message: Any, where: str) -> Message:
    """``{"role", "content"}`` of one chat message, its content reduced to text, and its ``TEMPLATE_FIELDS``."""
    content = _content(message, where)  # validates the message first
    plain = {"role": message["role"], "content": content}
    for field in TEMPLATE_FIELDS:
        value = message.get(field)
        if value is None:
            continue
        if field == "tool_calls":
            if not isinstance(value, list) or not all(isinstance(call, dict) for call in value):
                raise ValueError(f"{where}: 'tool_calls' must be a list of tool-call objects, got {value!r:.120}")
        elif not isinstance(value, str):
            raise ValueError(f"{where}: a message's {field!r} must be a string, got {type(value).__name__}")
        plain[field] = value
    return plain


def _content(message: Any, where: str) -> str:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ValueError(f"{where}: expected a chat message dict with 'role' and 'content', got {message!r:.120}")
    if "content" not in message and not message.get("tool_calls"):
        raise ValueError(f"{where}: a {message['role']!r} message has no 'content' (only an assistant turn with "
                         "'tool_calls' may omit it)")
    content = message.get("content")
    if content is None:  # assistant tool-call turns carry no text; any other None is a missing value, not ""
        if message.get("tool_calls"):
            return ""
        raise ValueError(f"{where}: a {message['role']!r} message has content None (a missing value in the data?); "
                         "only an assistant turn with 'tool_calls' may carry no text")
    if isinstance(content, list):  # multimodal-style [{"type": "text", "text": ...}] parts: keep the text
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{where}: a content part's 'text' must be a string")
        return text_of("".join(texts), where)
    if not isinstance(content, str):
        raise ValueError(f"{where}: message content must be a string, got {type(content).__name__}")
    return text_of(content, where)


def text_of(text: str, where: str) -> str:
    """``text`` when it is valid Unicode; lone surrogates (``"\ud800"``, from a bad decode) cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{where}: the text is not valid Unicode ({err.reason} at character {err.start}); "
                         "decode it as UTF-8 before scoring") from None
    return text


def prompt_messages(prompt: Any, index: int = 0) -> list[Message]:
    """Validate one prompt and return it as a list of plain ``{"role", "content"}`` messages."""
    where = f"prompt {index}"
    if isinstance(prompt, str):
        return [{"role": "user", "content": text_of(prompt, where)}]
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError(
            f"{where}: a prompt is a string or a non-empty list of chat messages, got {type(prompt).__name__}"
        )
    messages = [_plain(m, where) for m in prompt]
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles):
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"{where}: unknown role {role!r} in message {i}; use 'system', 'user', 'assistant' or "
                             "'tool'")
    if roles[-1] != "user":
        raise ValueError(
            f"{where}: a prompt must end with a user turn (roles are {roles}); move the assistant "
            "message into the completion or drop it"
        )
    for i, role in enumerate(roles):
        if role == "system" and i != 0:
            raise ValueError(f"{where}: a system message is only allowed as the first message (roles {roles})")
    return messages


def completion_messages(completion: Any, index: int = 0) -> list[Message]:
    """Validate one completion; return its messages, the last one being the assistant answer."""
    where = f"completion {index}"
    if isinstance(completion, str):
        return [{"role": "assistant", "content": text_of(completion, where)}]
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, (list, tuple)) or not completion:
        raise ValueError(
            f"{where}: a completion is a string or a list of assistant messages "
            f"([{{'role': 'assistant', 'content': ...}}]), got {type(completion).__name__}"
        )
    messages = [_plain(m, where) for m in completion]
    roles = [m["role"] for m in messages]
    if any(r not in ("assistant", "tool") for r in roles) or roles[-1] != "assistant":
        raise ValueError(
            f"{where}: completion messages must be assistant turns (tool results allowed in between) ending "
            f"with an assistant answer; got roles {roles}"
        )
    answer = messages[-1]
    if "tool_calls" in answer:  # the scored answer is its text: the call would be left out of it
        raise ValueError(f"{where}: the answer (the last assistant turn) makes a tool call; a reward is read from an "
                         "answer's text, which would leave the call out: score the assistant turn that answers after "
                         "the tool results, or send the call as the answer's text")
    # its reasoning_content (TRL's parse of a reasoning model's <think> block) is not the answer: the content is
    # scored, as the reward models' cards score a response
    return messages


def to_conversation(prompt: Any, completion: Any, index: int = 0) -> Conversation:
    context = prompt_messages(prompt, index)
    answer = completion_messages(completion, index)
    return Conversation(context=tuple(context + answer[:-1]), response=answer[-1]["content"])


def to_conversations(prompts: Sequence[Any], *completion_lists: Sequence[Any]) -> list[list[Conversation]]:
    """One list of conversations per completion list; all lists must have the prompts' length."""
    check_lists(prompts, *completion_lists)
    return [[to_conversation(p, c, i) for i, (p, c) in enumerate(zip(prompts, cl))] for cl in completion_lists]


def check_lists(prompts: Sequence[Any], *completion_lists: Sequence[Any]) -> None:
    """The list-level contract: lists (not a lone string), all of the prompts' length."""
    if isinstance(prompts, (str, dict)) or not isinstance(prompts, Sequence):
        raise ValueError("prompts must be a list (one entry per completion); wrap a single prompt in a list")
    for name, completions in zip(("completions", "completions_b"), completion_lists):
        if isinstance(completions, (str, dict)) or not isinstance(completions, Sequence):
            raise ValueError(f"{name} must be a list, got {type(completions).__name__}")
        if len(completions) != len(prompts):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(completions)} {name}: pass one completion per prompt "
                "(repeat a prompt for each of its completions)"
            )


def split_sizes(flat: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    """The results of one batched call over several callers' items, cut back into consecutive runs of ``sizes``."""
    out, at = [], 0
    for n in sizes:
        out.append(list(flat[at: at + n]))
        at += n
    return out
