"""Test hooks of the recipes (documented, test-only): ``RMPLUGINS_RECIPES_KILL_AFTER=iter-1/generate`` makes the
process SIGKILL itself right after that stage finished (``iter-1/generate/chunk-1``: after the first chunk of that
stage); ``RMPLUGINS_RECIPES_INTERRUPT_AFTER=...`` sends it SIGINT there instead, as Ctrl-C would."""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger("rmplugins.recipes")

KILL_ENV = "RMPLUGINS_RECIPES_KILL_AFTER"
INTERRUPT_ENV = "RMPLUGINS_RECIPES_INTERRUPT_AFTER"


def signal_hook(point: str) -> None:
    """Test hooks: SIGKILL (``KILL_ENV``) or Ctrl-C's SIGINT (``INTERRUPT_ENV``) to this process at ``point``."""
    for env, sig in ((KILL_ENV, signal.SIGKILL), (INTERRUPT_ENV, signal.SIGINT)):
        if os.environ.get(env) == point:
            logger.warning("%s=%s: sending %s to this process (test hook)", env, point, sig.name)
            if sig == signal.SIGKILL:
                logging.shutdown()
            os.kill(os.getpid(), sig)
