"""Bradley-Terry sequence classifiers (RM-Mistral-7B, FsfairX-LLaMA3-RM, Skywork-Reward(-V2), INF-ORM, ...).

Reference (model card of RM-Mistral-7B, RLHFlow Online-RLHF): render with the model's chat template, drop the
BOS string, tokenize normally (one BOS), reward = the single logit at the last token. The head is transformers'
``score`` linear layer, or INF-ORM's ``Linear -> ReLU -> Linear`` (``score.0``, ``score.2``), told apart by the
checkpoint's tensors (``checkpoints.score_head``).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from transformers import AutoModelForSequenceClassification

from ..base import PointwiseRewardModel, engine_backend
from ..chat import load_chat_tokenizer, render, strip_bos
from ..placement import model_kwargs
from .common import mlp_score_head, pad_or_eos, quiet_transformers, score_head

logger = logging.getLogger("rmplugins")


class BradleyTerryRewardModel(PointwiseRewardModel):
    kind = "bt"

    def __init__(self, model, tokenizer, *, name_or_path, max_length, token_budget=None, chat_template=None,
                 backend=None):
        super().__init__(model, tokenizer, name_or_path=name_or_path, max_length=max_length)
        self.chat_template = chat_template
        head = getattr(model, "score", None)
        last = head[-1] if isinstance(head, torch.nn.Sequential) else head
        if not isinstance(last, torch.nn.Linear) or last.out_features != 1:
            raise ValueError(f"{name_or_path}: a Bradley-Terry reward model needs a single-logit `score` head "
                             f"(num_labels=1); found {head!r}")
        self.head = head
        self.backend = (backend or engine_backend(token_budget))(model.base_model, pad_or_eos(tokenizer), True)

    @classmethod
    def from_pretrained(cls, checkpoint, *, name_or_path, device, dtype, attn_implementation=None,
                        device_map=None, max_length=None, token_budget=None, chat_template=None, backend=None):
        tokenizer = load_chat_tokenizer(checkpoint.path, name_or_path, chat_template)
        hidden = int(checkpoint.text.get("hidden_size") or 0)
        head = score_head(checkpoint.shapes, hidden, labels=1)
        # transformers' classifier has a linear `score`: for an MLP head its load report would call score.0/score.2
        # unexpected and a fresh score.weight missing, before the head below replaces it with the real one
        with quiet_transformers() if head == "mlp" else nullcontext():
            model = AutoModelForSequenceClassification.from_pretrained(
                checkpoint.path, **model_kwargs(device, dtype, attn_implementation, device_map))
        if head == "mlp":
            model.score = mlp_score_head(checkpoint.path, hidden, model.score.weight.device, dtype)
            logger.info("%s: Linear -> ReLU -> Linear score head (score.0, score.2) read from the checkpoint",
                        name_or_path)
        limit = max_length or checkpoint.text.get("max_position_embeddings") or 4096
        return cls(model, tokenizer, name_or_path=name_or_path, max_length=limit, token_budget=token_budget,
                   backend=backend)

    @staticmethod
    def vllm_engine_args(checkpoint, name_or_path) -> dict:
        """vLLM's own sequence classifier; INF-ORM's MLP head is refused (vLLM's classifier would read a linear
        head)."""
        hidden = int(checkpoint.text.get("hidden_size") or 0)
        if score_head(checkpoint.shapes, hidden, labels=1) == "mlp":
            raise ValueError(f"{name_or_path}: this classifier's head is Linear -> ReLU -> Linear (INF-ORM), which "
                             "vLLM's sequence classifier does not load (it would read a linear score head); use "
                             "engine='transformers'")
        return {"runner": "pooling"}

    def encode(self, messages: list[dict]) -> list[int]:
        text = strip_bos(self.tokenizer, render(self.tokenizer, messages, name=self.name_or_path))
        ids = self.tokenizer(text)["input_ids"]
        return self._truncate(ids, side="left")  # RM-Mistral-7B was trained with left truncation

    def encode_row(self, conversation) -> list[int]:
        return self.encode(conversation.messages)

    def forward_rows(self, sequences):
        """The logit at each sequence's last token."""
        if self.backend.name == "vllm":
            return {"score": torch.tensor(self.backend.classify(sequences), dtype=torch.float32)}
        hidden = self.backend.hidden_at(sequences, [[-1]] * len(sequences))
        if not hidden:
            return {"score": torch.zeros(0)}
        weight = next(self.head.parameters())
        h = torch.cat(hidden).to(weight.device, weight.dtype)
        with torch.inference_mode():
            return {"score": self.head(h)[:, 0].float().cpu()}
