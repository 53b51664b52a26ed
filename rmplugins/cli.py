"""``rmplugins`` command line: one parser, a subcommand per job. Each subcommand lives beside the code it drives
(``register(subparsers)`` adds its parser and sets ``func``) and imports what it runs only when it runs, so
``--help``, ``--version`` and a mistaken option answer at once."""

from __future__ import annotations

import logging
import os
import sys

from . import __version__, demo
from .options import ArgumentParser
from .recipes import cli as recipes_cli
from .serving import cli as serving_cli

COMMANDS = (demo, serving_cli, recipes_cli)  # rmplugins demo / serve / iterative-dpo, rejection-sampling


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="rmplugins",
        description="Open reward and preference models (Bradley-Terry, ArmoRM, RLHFlow pair-PM, PairRM, GPM, "
                    "process reward models, generative judges) for RLHF loops: a reward server for every "
                    "framework's client (OpenRLHF, verl, AReaL, slime, TRL), iterative DPO and rejection sampling, "
                    "a demo on built-in tiny models.",
    )
    parser.add_argument("--version", action="version", version=f"rmplugins {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # vLLM logs to stdout by default; here stdout carries only results (tables, summaries), logs go to stderr
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback from wherever the work was
        hint = getattr(args, "interrupted_hint", "")
        print(f"\nrmplugins {args.command}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
