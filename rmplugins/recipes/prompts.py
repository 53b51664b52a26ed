"""Reading the prompt file of the recipes: JSON lines, one object per line with a ``prompt`` field (a string or a
list of chat messages ending with a user turn). Every problem is reported with the file and line number."""

from __future__ import annotations

import json
import os
from typing import Any

from ..inputs import prompt_messages


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file, the line and what to fix."""


def read_prompts(path: str | os.PathLike, field: str = "prompt") -> list[Any]:
    """Return the prompts of a JSON-lines file, in file order, exactly as written (str or list of messages).

    Blank lines are skipped. A line that is not JSON, not an object, lacks ``field`` or holds an invalid prompt
    raises :class:`PromptFileError` naming ``path:line``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PromptFileError(f"prompt file {path!r} does not exist (expected JSON lines with a {field!r} field)")
    prompts: list[Any] = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise PromptFileError(f"{where}: not UTF-8 text (byte {raw[err.start]:#04x} at byte {err.start + 1} "
                                      "of the line); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(
                    f"{where}: not valid JSON ({err.msg} at column {err.colno}); each line must be one JSON object "
                    f"such as {{\"{field}\": \"...\"}}") from None
            if not isinstance(row, dict):
                raise PromptFileError(f"{where}: expected a JSON object with a {field!r} field, "
                                      f"got {type(row).__name__}")
            if field not in row:
                raise PromptFileError(f"{where}: missing the {field!r} field (fields present: {sorted(row)}); "
                                      f"every line needs {field!r} as a string or a list of chat messages")
            prompt = row[field]
            if isinstance(prompt, str) and not prompt.strip():
                raise PromptFileError(f"{where}: the {field!r} field is an empty string")
            try:
                prompt_messages(prompt, len(prompts))
            except ValueError as err:
                raise PromptFileError(f"{where}: invalid {field!r}: {err}") from None
            prompts.append(prompt)
    if not prompts:
        raise PromptFileError(f"prompt file {path!r} holds no prompts")
    return prompts


def is_conversational(prompts: list[Any]) -> bool:
    """TRL's rule: a dataset is conversational when its prompts are lists of messages."""
    return any(not isinstance(p, str) for p in prompts)


def as_messages(prompt: Any) -> list[dict]:
    """A prompt as chat messages (a string is one user turn)."""
    return prompt_messages(prompt)
