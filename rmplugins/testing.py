"""``rmplugins.testing``: the tiny checkpoints' first home; they live in :mod:`rmplugins.tiny`."""

from .tiny import *  # noqa: F401,F403
from .tiny import FORMAT_VERSION, KINDS, build_directory_atomically, build_tiny_checkpoint, tiny_checkpoint  # noqa: F401
