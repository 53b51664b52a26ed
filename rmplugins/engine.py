"""The scoring engine: runs a backbone over many token sequences and returns the final hidden states at the
positions each family's head reads.

Every family reduces to "hidden states at a few positions of each sequence, then a small head", so one engine
serves them all. Sequences are sorted by length and packed into micro-batches capped by a token budget
(padded tokens counted), so a batch of mixed lengths wastes little padding; results come back in the caller's
order.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

DEFAULT_CPU_TOKEN_BUDGET = 4096


class ScoringEngine:
    """``hidden_at(sequences, positions)`` -> one ``[len(positions[i]), hidden]`` tensor per sequence.

    ``backbone`` is a transformers base model (``LlamaModel``, ``MistralModel``, ``DebertaV2Model``...) whose
    output ``last_hidden_state`` already includes the final norm. Positions may be negative (``-1`` = last).
    """

    def __init__(self, backbone: torch.nn.Module, pad_token_id: int, *, causal: bool = True,
                 token_budget: int | None = None):
        self.backbone = backbone
        self.pad_token_id = int(pad_token_id)
        self.causal = causal
        self.token_budget = token_budget

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def budget(self) -> int:
        return self.token_budget or DEFAULT_CPU_TOKEN_BUDGET

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into length-sorted micro-batches of at most ``budget()`` padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        budget, out, current, longest = self.budget(), [], [], 0
        for i in order:
            longest_if_added = max(longest, lengths[i])
            if current and longest_if_added * (len(current) + 1) > budget:
                out.append(current)
                current, longest_if_added = [], lengths[i]
            current.append(i)
            longest = longest_if_added
        if current:
            out.append(current)
        return out

    @torch.inference_mode()
    def hidden_at(self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
                  ) -> list[torch.Tensor]:
        if len(sequences) != len(positions):
            raise ValueError("one list of positions per sequence is needed")
        results: list[torch.Tensor | None] = [None] * len(sequences)
        for batch in self.batches([len(s) for s in sequences]):
            for i, h in zip(batch, self._forward([sequences[i] for i in batch], [positions[i] for i in batch])):
                results[i] = h
        return results  # type: ignore[return-value]

    def _forward(self, seqs: list[Sequence[int]], positions: list[Sequence[int]]) -> list[torch.Tensor]:
        device = self.device
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[row, : len(s)] = 1
        out = self.backbone(input_ids=ids.to(device), attention_mask=mask.to(device))
        hidden = out.last_hidden_state
        picked = []
        for row, (s, pos) in enumerate(zip(seqs, positions)):
            index = torch.as_tensor([p % len(s) for p in pos], device=hidden.device)
            picked.append(hidden[row].index_select(0, index))
        return picked
