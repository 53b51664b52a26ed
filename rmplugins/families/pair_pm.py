"""RLHFlow pair-preference-model-LLaMA3-8B: a causal LM that answers "A" or "B".

Reference (model card, seed 000): render the context with a "plain" template, build
``"[CONTEXT] {context} [RESPONSE A] {A} [RESPONSE B] {B} \\n"``, wrap it as one user message in the model's chat
template, drop the BOS string, tokenize without special tokens; p(A) = softmax over the last-position logits of
"A" and "B" (temperature 1). P(a beats b) = mean of p(a) over both orders (position swap).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from ..base import PairwiseRewardModel, engine_backend
from ..chat import load_chat_tokenizer, merge_system, render, strip_bos
from ..placement import model_kwargs
from .common import pad_or_eos, positive_temperature

PLAIN_TEMPLATE = (
    "\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n {{ message['content'] }}"
    "{% else %}\n\n<turn> assistant\n {{ message['content'] }}{% endif %}{% endfor %}\n\n\n"
)
PROMPT_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_A} [RESPONSE B] {response_B} \n"


def single_token_id(tokenizer, text: str, name: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{name}: the answer {text!r} must be a single token of the tokenizer, got ids {ids}; "
                         "this tokenizer cannot be used as a pair-preference model")
    return ids[0]


class PairPMRewardModel(PairwiseRewardModel):
    kind = "pair_pm"

    def __init__(self, model, tokenizer, *, name_or_path, max_length, token_budget=None, temperature=1.0,
                 backend=None):
        super().__init__(model, tokenizer, name_or_path=name_or_path, max_length=max_length)
        self.temperature = positive_temperature("temperature", temperature, 1.0)
        self.token_a = single_token_id(tokenizer, "A", name_or_path)
        self.token_b = single_token_id(tokenizer, "B", name_or_path)
        lm_head = model.get_output_embeddings()
        # Only the "A" and "B" rows of the LM head are ever needed.
        self.answer_rows = lm_head.weight.detach()[[self.token_a, self.token_b]].float()
        self.answer_bias = (lm_head.bias.detach()[[self.token_a, self.token_b]].float()
                            if getattr(lm_head, "bias", None) is not None else None)
        self.backend = (backend or engine_backend(token_budget))(model.get_decoder(), pad_or_eos(tokenizer), True)

    @classmethod
    def from_pretrained(cls, checkpoint, *, name_or_path, device, dtype, attn_implementation=None,
                        device_map=None, max_length=None, token_budget=None, chat_template=None, temperature=1.0,
                        backend=None):
        positive_temperature("temperature", temperature, 1.0)  # before the weights load
        tokenizer = load_chat_tokenizer(checkpoint.path, name_or_path, chat_template)
        model = AutoModelForCausalLM.from_pretrained(checkpoint.path, **model_kwargs(device, dtype,
                                                                                     attn_implementation, device_map))
        limit = max_length or checkpoint.text.get("max_position_embeddings") or 8192
        return cls(model, tokenizer, name_or_path=name_or_path, max_length=limit, token_budget=token_budget,
                   temperature=temperature, backend=backend)

    @staticmethod
    def vllm_engine_args(checkpoint, name_or_path) -> dict:
        """A generating engine whose next-token log-probabilities are read, restricted to "A" and "B"."""
        return {"runner": "generate", "logprobs_mode": "processed_logprobs", "max_logprobs": 2}

    def to(self, device):
        super().to(device)
        self.answer_rows = self.answer_rows.to(device)
        if self.answer_bias is not None:
            self.answer_bias = self.answer_bias.to(device)
        return self

    def context_text(self, context: tuple[dict, ...]) -> str:
        """The plain template alternates user/assistant by position, so a system message is folded in first."""
        messages = merge_system([dict(m) for m in context])
        return self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=PLAIN_TEMPLATE)

    def encode(self, context_text: str, response_a: str, response_b: str) -> list[int]:
        prompt = PROMPT_TEMPLATE.format(context=context_text, response_A=response_a, response_B=response_b)
        text = strip_bos(self.tokenizer, render(self.tokenizer, [{"role": "user", "content": prompt}],
                                                name=self.name_or_path))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self._truncate(ids, side="left")  # keep the answer slot; the reference never truncates

    def answer_logits(self, sequences: list[list[int]]) -> torch.Tensor:
        """[N, 2] logits of "A" and "B" at the last position of each sequence (on vLLM: their log-probabilities
        restricted to the two, which differ from the logits by one constant per row: the softmax is the same)."""
        if self.backend.name == "vllm":
            return self.backend.answer_logprobs(sequences, [self.token_a, self.token_b])
        hidden = self.backend.hidden_at(sequences, [[-1]] * len(sequences))
        h = torch.cat(hidden).float().to(self.answer_rows.device)
        logits = h @ self.answer_rows.T
        if self.answer_bias is not None:
            logits = logits + self.answer_bias
        return logits.cpu()

    def encode_pair(self, a, b) -> tuple[list[int], list[int]]:
        """The judge's prompt with a in position A, and with a in position B."""
        context = self.context_text(a.context)
        return self.encode(context, a.response, b.response), self.encode(context, b.response, a.response)

    def pair_probs(self, encoded_pairs):
        """The mean over both orders of P(a), softmax over the "A"/"B" logits at the last position."""
        sequences = [seq for pair in encoded_pairs for seq in pair]
        probs = torch.softmax(self.answer_logits(sequences).double() / self.temperature, dim=-1)
        p_a_first = probs[0::2, 0]   # P("A") with a as A
        p_a_second = probs[1::2, 1]  # P("B") with a as B
        return ((p_a_first + p_a_second) / 2).float()
