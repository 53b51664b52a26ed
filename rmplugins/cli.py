"""``rmplugins`` command line. Each subcommand lives beside the code it drives and registers itself here:
a module in ``COMMAND_MODULES`` exposes ``register(subparsers)`` which adds its parser and sets ``func``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "rmplugins.demo",            # rmplugins demo
    "rmplugins.serving.cli",     # rmplugins serve
    "rmplugins.recipes.cli",     # rmplugins iterative-dpo / rejection-sampling
)


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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="rmplugins",
        description="Open reward and preference models (Bradley-Terry, ArmoRM, RLHFlow pair-PM, PairRM, GPM) "
                    "for RLHF loops: a reward server for OpenRLHF, iterative DPO and rejection sampling, a demo.",
    )
    parser.add_argument("--version", action="version", version=f"rmplugins {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and name.startswith(err.name):  # the command's module is not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    # vLLM logs to stdout by default; here stdout carries only results (tables, summaries), logs go to stderr
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
