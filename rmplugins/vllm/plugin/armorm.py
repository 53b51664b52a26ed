"""ArmoRM (``LlamaForRewardModelWithGating``) as a vLLM pooling model: vLLM's Llama, then the card's heads.

The positions and the head arithmetic are rmplugins' own (:mod:`rmplugins.families.armorm`), so vLLM's numbers and
the transformers engine's differ only by the backbones' rounding:
- reward: the regression layer at the last token (the card's first-pad-minus-one rule);
- gate: the gating network at the ``<|eot_id|>`` closing the last user turn, found from the token ids;
- ``classify`` (the default task): the score (its sigmoid unless ``use_activation`` is false, as vLLM's
  classifiers do);
- ``embed`` (``--pooler-config '{"task": "embed"}'``, or ``PoolerConfig(task="embed")``): ``[score, 19 objective
  rewards, 19 gating weights]``, unnormalised. vLLM serves one task per engine.
"""

from __future__ import annotations

import torch
from torch import nn
from vllm.config import VllmConfig

from ...chat import load_chat_tokenizer
from ...families.armorm import GatingNetwork, armorm_heads, find_gating_position, gating_pattern, reward_position
from .common import LlamaPoolingModel, PositionPooler, nan_where, report, whole_prompts


class ArmoRMPooler(PositionPooler):
    def forward(self, hidden_states: torch.Tensor, pooling_metadata) -> list[torch.Tensor]:
        model = self.owner[0]
        parts, ids, reasons = whole_prompts(hidden_states, pooling_metadata)
        picks = []
        for i, (h, seq) in enumerate(zip(parts, ids)):
            gate_at = find_gating_position(seq, model.gating_pattern) if reasons[i] is None else None
            if reasons[i] is None and gate_at is None:
                reasons[i] = ("no <|eot_id|><|start_header_id|>assistant<|end_header_id|> in it (a conversation "
                              "must end with an assistant turn after a user turn)")
            last = len(h) - 1
            at = (reward_position(seq, model.pad_token_id), gate_at) if reasons[i] is None else (last, last)
            picks.append(torch.stack([h[at[0]], h[at[1]]]))
        report("ArmoRM", ids, reasons)
        h = torch.stack(picks)
        rewards, gate, score = armorm_heads(model.regression_layer, model.gating, model.reward_transform_matrix,
                                            h[:, 0], h[:, 1])
        rows = nan_where(torch.cat([score[:, None], rewards, gate], dim=1), reasons)
        results = []
        for row, params in zip(rows, pooling_metadata.pooling_params):
            if params.task == "classify":
                row = row[:1]
                if params.use_activation is not False:
                    row = torch.sigmoid(row)
            results.append(row)
        return results


class ArmoRMForVLLM(LlamaPoolingModel):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        n = getattr(config, "num_objectives", 19)
        # the heads stay float32, as stored and as rmplugins' transformers engine keeps them
        self.regression_layer = nn.Linear(config.hidden_size, n, bias=False, dtype=torch.float32)
        self.reward_transform_matrix = nn.Parameter(torch.eye(n, dtype=torch.float32), requires_grad=False)
        self.gating = GatingNetwork(config.hidden_size, n, temperature=getattr(config, "gating_temperature", 10),
                                    hidden_dim=getattr(config, "gating_hidden_dim", 1024),
                                    n_hidden=getattr(config, "gating_n_hidden", 3)).float()
        tokenizer = load_chat_tokenizer(vllm_config.model_config.tokenizer, "ArmoRM")
        self.gating_pattern = gating_pattern(tokenizer)
        self.pad_token_id = getattr(config, "pad_token_id", None)
        pooler_config = vllm_config.model_config.pooler_config
        task = pooler_config.task if pooler_config is not None else None
        self.pooler = ArmoRMPooler(self, "embed" if task == "embed" else "classify")
