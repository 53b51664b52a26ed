"""``--no-progress``: every progress bar off, ours and the libraries' (transformers' "Loading weights" and
"Writing model shards", datasets' "Tokenizing"/"Map", huggingface_hub's downloads, vLLM's "Processed prompts")."""

from __future__ import annotations

import os
import sys


def silence_progress_bars() -> None:
    """Turn off the bars of every library rmplugins drives, for this process and the ones it starts: the variables
    each library reads when it is imported, and for one this process has imported already, its own switch. None is
    imported here: importing transformers and datasets only to silence them cost every refused command 3 s."""
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' bars follow huggingface_hub's switch
    os.environ["TQDM_DISABLE"] = "1"  # tqdm >= 4.66 reads it: bars made by any library, vLLM's included
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
