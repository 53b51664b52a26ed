"""Test support, outside the library's core (nothing in rmplugins imports it but ``rmplugins demo``): tiny
checkpoints of every family in the real on-disk layout, built offline and loaded by tests, the demo and the
benchmarks through the very code path a hub id takes.

    from rmplugins.testing import tiny_checkpoint
    path = tiny_checkpoint("armorm")          # built once into ~/.cache/rmplugins/tiny
"""

from .checkpoints import (
    BUILDERS,
    DIR_NAMES,
    FORMAT_VERSION,
    KINDS,
    build_directory_atomically,
    build_tiny_checkpoint,
    tiny_checkpoint,
    tiny_root,
)
from .tokenizers import (
    GEMMA_CHAT_TEMPLATE,
    LLAMA3_CHAT_TEMPLATE,
    MISTRAL_CHAT_TEMPLATE,
    QWEN3_CHAT_TEMPLATE,
    QWEN25_CHAT_TEMPLATE,
    WORDS,
    build_llama3_tokenizer,
)

__all__ = ["BUILDERS", "DIR_NAMES", "FORMAT_VERSION", "GEMMA_CHAT_TEMPLATE", "KINDS", "LLAMA3_CHAT_TEMPLATE",
           "MISTRAL_CHAT_TEMPLATE", "QWEN25_CHAT_TEMPLATE", "QWEN3_CHAT_TEMPLATE", "WORDS",
           "build_directory_atomically", "build_llama3_tokenizer", "build_tiny_checkpoint", "tiny_checkpoint",
           "tiny_root"]
