"""Process reward models (Qwen2.5-Math-PRM-7B/72B, ``Qwen2ForProcessRewardModel``): a reward per reasoning step.

Reference (the model card): the response is split into steps, joined with ``<extra_0>`` and ended with one; the
conversation (the card's system message, the question, that assistant turn) is rendered with the chat template
and tokenized; the model gives two logits per token (``Linear(h, h) -> ReLU -> Linear(h, 2)`` on the final
hidden states), and a step's reward is the softmax's positive-class probability at its ``<extra_0>``
(``make_step_rewards``). ``score`` reduces the steps to one reward: ``min`` (the default: a solution is as good as
its weakest step), ``last``, ``mean`` or ``product``.
"""

from __future__ import annotations

import math

import torch
from transformers import AutoModel

from ..base import PointwiseRewardModel, engine_backend
from ..chat import load_chat_tokenizer, render
from ..inputs import to_conversations
from ..placement import model_kwargs
from ..refusals import TOO_LONG, Unscorable
from .common import mlp_score_head, pad_or_eos, quiet_transformers, score_head

STEP_TOKEN = "<extra_0>"
CARD_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
AGGREGATES = {
    "min": min,
    "last": lambda steps: steps[-1],
    "mean": lambda steps: sum(steps) / len(steps),
    "product": math.prod,
}


class ProcessRewardModel(PointwiseRewardModel):
    kind = "prm"

    def __init__(self, model, head, tokenizer, *, name_or_path, max_length, token_budget=None,
                 step_separator: str = "\n\n", aggregate: str = "min", system_prompt: str | None = CARD_SYSTEM,
                 backend=None):
        super().__init__(model, tokenizer, name_or_path=name_or_path, max_length=max_length)
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate={aggregate!r}: choose one of {sorted(AGGREGATES)}")
        if not step_separator:
            raise ValueError("step_separator must be a non-empty string (the card splits steps on '\\n\\n')")
        step_id = tokenizer.convert_tokens_to_ids(STEP_TOKEN)
        single = tokenizer.encode(STEP_TOKEN, add_special_tokens=False) == [step_id]
        if step_id is None or step_id == tokenizer.unk_token_id or not single:
            raise ValueError(f"{name_or_path}: the tokenizer has no single {STEP_TOKEN} token, which a "
                             "Qwen2.5-Math-PRM-style model reads each step's reward at")
        self.step_id = step_id
        self.head = head
        self.step_separator = step_separator
        self.aggregate = aggregate
        self.system_prompt = system_prompt
        self.backend = (backend or engine_backend(token_budget))(model, pad_or_eos(tokenizer), True)

    @classmethod
    def from_pretrained(cls, checkpoint, *, name_or_path, device, dtype, attn_implementation=None,
                        device_map=None, max_length=None, token_budget=None, chat_template=None,
                        step_separator="\n\n", aggregate="min", system_prompt=CARD_SYSTEM, backend=None):
        tokenizer = load_chat_tokenizer(checkpoint.path, name_or_path, chat_template)
        hidden = int(checkpoint.text.get("hidden_size") or 0)
        if score_head(checkpoint.shapes, hidden, labels=2) != "mlp":
            raise ValueError(f"{name_or_path}: a process reward model needs the Linear -> ReLU -> Linear(h, 2) head "
                             "(score.0, score.2); this checkpoint has a linear score.weight")
        with quiet_transformers():  # the checkpoint's score.* tensors are the head, read below, not the backbone's
            backbone = AutoModel.from_pretrained(checkpoint.path,
                                                 **model_kwargs(device, dtype, attn_implementation, device_map))
        head = mlp_score_head(checkpoint.path, hidden, backbone.embed_tokens.weight.device, dtype, labels=2)
        limit = max_length or checkpoint.text.get("max_position_embeddings") or 4096
        return cls(backbone, head, tokenizer, name_or_path=name_or_path, max_length=limit,
                   token_budget=token_budget, step_separator=step_separator, aggregate=aggregate,
                   system_prompt=system_prompt, backend=backend)

    @staticmethod
    def vllm_engine_args(checkpoint, name_or_path) -> dict:
        """vLLM's own ``Qwen2ForProcessRewardModel`` (step pooling at ``<extra_0>``)."""
        return {"runner": "pooling"}

    # ---------------------------------------------------------------- steps
    def steps(self, response: str) -> list[str]:
        """The response's steps: split on ``step_separator``, blank pieces dropped (at least one step)."""
        if STEP_TOKEN in response:
            raise ValueError(f"the response contains {STEP_TOKEN}, the token that marks where each step's reward "
                             "is read: remove it from the text")
        steps = [s.strip() for s in response.split(self.step_separator)]
        return [s for s in steps if s] or [response.strip()]

    def encode_row(self, conversation) -> tuple[list[int], list[int]]:
        """(token ids, the position of each step's ``<extra_0>``)."""
        messages = [dict(m) for m in conversation.context]
        if self.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        steps = self.steps(conversation.response)
        messages.append({"role": "assistant", "content": STEP_TOKEN.join(steps) + STEP_TOKEN})
        ids = self.tokenizer(render(self.tokenizer, messages, name=self.name_or_path))["input_ids"]
        positions = [i for i, t in enumerate(ids) if t == self.step_id]
        if len(positions) != len(steps):
            raise ValueError(f"expected {len(steps)} {STEP_TOKEN} markers after tokenizing, found {len(positions)}")
        if len(ids) > self.max_length:
            raise Unscorable(f"the conversation has {len(ids)} tokens, more than max_length={self.max_length}: the "
                             "steps past it would have no reward; shorten it or load with a larger max_length=...",
                             TOO_LONG)
        return ids, positions

    def forward_rows(self, encoded):
        """``score`` [N] (the steps aggregated) and ``step_rewards``: per row, a tensor of its steps' P(good)."""
        if not encoded:
            return {"score": torch.zeros(0), "step_rewards": []}
        if self.backend.name == "vllm":
            probs = [p[:, 1] for p in self.backend.step_probs([ids for ids, _ in encoded], self.step_id)]
            for p, (_, positions) in zip(probs, encoded):
                if len(p) != len(positions):
                    raise RuntimeError(f"vLLM returned {len(p)} step rewards for {len(positions)} steps")
            return self.step_output(probs)
        hidden = self.backend.hidden_at([ids for ids, _ in encoded], [pos for _, pos in encoded])
        weight = next(self.head.parameters())
        with torch.inference_mode():
            probs = [torch.softmax(self.head(h.to(weight.device, weight.dtype)).float(), -1)[:, 1].cpu()
                     for h in hidden]
        return self.step_output(probs)

    def step_output(self, probs: list[torch.Tensor]) -> dict:
        """``forward_rows``' answer from each row's step rewards (on either backend): the steps aggregated, and the
        steps."""
        reduce = AGGREGATES[self.aggregate]
        return {"score": torch.tensor([float(reduce(p.tolist())) for p in probs]), "step_rewards": probs}

    def score_steps(self, prompts, completions) -> list[list[float]]:
        """Each response's step rewards: P(step is correct) at each step's ``<extra_0>``."""
        (convs,) = to_conversations(prompts, completions)
        return [p.tolist() for p in self._forward([self.encode_row(c) for c in convs])["step_rewards"]]
