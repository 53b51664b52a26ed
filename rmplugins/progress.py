"""``--no-progress``: every progress bar off, ours and the libraries' (transformers' "Loading weights" and
"Writing model shards", datasets' "Tokenizing"/"Map", huggingface_hub's downloads, vLLM's "Processed prompts")."""

from __future__ import annotations

import os


def silence_progress_bars() -> None:
    """Turn off the bars of every library rmplugins drives, for this process and the ones it starts."""
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"  # tqdm >= 4.66 reads it: bars made by any library, vLLM's included
    import huggingface_hub
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:  # datasets reads the variable above when it is first imported; a broken one is reported by the preflight
        import datasets
    except ImportError:
        return
    datasets.disable_progress_bars()
