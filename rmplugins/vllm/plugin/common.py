"""What the plugin's models share: vLLM's Llama under a pooler of their own (:class:`LlamaPoolingModel`), each
request's hidden states, and an output that says "cannot".

A pooler runs inside vLLM's engine, where raising would end the engine for every client: a request the model
cannot score gets NaN (logged with the reason) instead, which no client can mistake for a reward. The heads still run
on every row (at the last token where a position is unknown), so vLLM's memory profiling measures them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.pooler import Pooler, PoolingParamsUpdate
from vllm.model_executor.models.interfaces_base import default_pooling_type
from vllm.model_executor.models.llama import LlamaModel
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix

logger = logging.getLogger("rmplugins.vllm.plugin")


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


@default_pooling_type(tok_pooling_type="STEP")
class LlamaPoolingModel(nn.Module):
    """vLLM's Llama backbone (``model.*``, tensor-parallel as vLLM shards it) whose final hidden states go to the
    subclass's pooler; the heads are the subclass's, loaded by name with the backbone's tensors. The pooling type
    says "positions inside the prompt", for which vLLM turns prefix caching and chunked prefill off."""

    is_pooling_model = True
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        self.config = vllm_config.model_config.hf_config
        self.model = LlamaModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self, ignore_unexpected_prefixes=["lm_head."]).load_weights(weights)


class PositionPooler(Pooler):
    """A pooler that reads its model's hidden states at positions it finds in each request's token ids."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.owner = [model]  # not a submodule: the heads belong to the model's weights
        self.task = task

    def get_supported_tasks(self) -> set[str]:
        return {self.task}  # vLLM serves one task per engine

    def get_pooling_updates(self, task) -> PoolingParamsUpdate:
        return PoolingParamsUpdate(requires_token_ids=True)
