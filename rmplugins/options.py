"""What every ``rmplugins`` command shares on its command line: argument types that say what was wrong, a help
formatter that shows defaults, and a parser whose errors are two lines (argparse prints the whole usage first:
25 lines for a recipe, with the one that matters last); and the same check for the Python API's whole numbers."""

from __future__ import annotations

import argparse
import math
import operator
from typing import Any


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with short errors: the problem, and where the help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def _number(kind, name: str, test, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = _number(int, "positive integer", lambda v: v >= 1, "a positive integer (1 or more)")
non_negative_int = _number(int, "non-negative integer", lambda v: v >= 0, "0 or more")
positive_float = _number(float, "positive number", lambda v: v > 0 and v != float("inf"), "a positive number")
non_negative_float = _number(float, "non-negative number", lambda v: 0 <= v < float("inf"), "0 or more")
probability = _number(float, "number in (0, 1]", lambda v: 0 < v <= 1, "in (0, 1]")


def whole_number(option: str, value: Any, least: int, hint: str = "") -> int:
    """``value`` as a whole number of at least ``least`` (numpy integers too); a float, a string or a bool is refused,
    never truncated or clamped: ``num_generations=4.5`` read as 4 would split every group wrongly."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < least:
        raise ValueError(f"{option} must be a whole number of at least {least}{hint}, got {value!r}")
    return number


def real_number(option: str, value: Any, hint: str = "") -> float:
    """``value`` as a finite float (numpy numbers too); a string, a bool, NaN or infinity is refused: ``clip=nan``
    clipped nothing and ``length_penalty=nan`` made every reward NaN, without a word."""
    try:
        number = None if isinstance(value, (bool, str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{option} must be a finite number{hint}, got {value!r}")
    return number


def json_object(text: str) -> dict:
    """A JSON object on the command line (keyword arguments passed through to another library)."""
    import json

    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object such as '{{\"enforce_eager\": true}}'")
    return value


json_object.__name__ = "JSON object"


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help unless the text already says its default, or there is nothing to
    say (no value, a flag that is off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"
