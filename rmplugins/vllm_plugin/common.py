"""What the plugin's poolers share: each request's hidden states, and an output that says "cannot".

A pooler runs inside vLLM's engine, where raising would end the engine for every client: a request the model
cannot score gets NaN (logged with the reason) instead, which no client can mistake for a reward. The heads still run
on every row (at the last token where a position is unknown), so vLLM's memory profiling measures them.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("rmplugins.vllm_plugin")


def whole_prompts(hidden_states: torch.Tensor, pooling_metadata) -> tuple[list[torch.Tensor], list[list[int]],
                                                                          list[str | None]]:
    """Per request: its hidden states [n, H], its token ids, and why it cannot be scored (None when this step
    computed its whole prompt)."""
    cursor = pooling_metadata.get_pooling_cursor()
    scheduled = cursor.num_scheduled_tokens_cpu.tolist()
    prompt_lens = pooling_metadata.prompt_lens.tolist()
    parts = list(torch.split(hidden_states[: sum(scheduled)], scheduled))
    ids = [t.tolist() for t in pooling_metadata.get_prompt_token_ids_cpu()]
    reasons = [None if n == length else
               f"its prompt ran in part ({n} of {length} tokens): prefix caching or chunked prefill is on, and this "
               "model reads hidden states inside the prompt; start vLLM with --no-enable-prefix-caching "
               "--no-enable-chunked-prefill (the defaults for it)" for n, length in zip(scheduled, prompt_lens)]
    return parts, ids, reasons


def report(model: str, ids: list[list[int]], reasons: list[str | None]) -> None:
    """Log each request answered with NaN, and why; vLLM's warm-up batch (all token ids 0) is not reported."""
    for seq, reason in zip(ids, reasons):
        if reason is not None and any(seq):
            logger.error("%s: a request of %d tokens gets NaN: %s", model, len(seq), reason)


def nan_where(rows: torch.Tensor, reasons: list[str | None]) -> list[torch.Tensor]:
    """The rows as float32, NaN in the rows that have a reason."""
    rows = rows.float()
    return [torch.full_like(row, float("nan")) if reason is not None else row for row, reason in zip(rows, reasons)]
