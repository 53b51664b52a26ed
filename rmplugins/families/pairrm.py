"""PairRM / Better-PairRM (llm-blender ``DebertaV2PairRM``): a DeBERTa-v3 cross-encoder of (source, a, b).

Reference (llm-blender ``tokenize_pair`` and ``DebertaV2PairRM.forward``; Better-PairRM card, seed 001):
    ids = [CLS]<|source|>src[SEP] + [CLS]<|candidate1|>a[SEP] + [CLS]<|candidate2|>b[SEP]
    left = head([h_src; h_a]), right = head([h_src; h_b]), logit(a, b) = mean(left - right)
    P(a beats b) = sigmoid((logit(a, b) - logit(b, a)) / 2)      (llm-blender's "[A,B]+[B,A]" mode)
PairRM: source <= 1224 tokens, candidates <= (2048 - len(src)) // 2, right truncation; the source is the user's
text (llm-blender's conversation format for multi-turn). Better-PairRM: Vicuna-style conversation template,
source left-truncated to 2030 tokens, candidates to 670, total 3370.
"""

from __future__ import annotations

import jinja2
import torch
from torch import nn
from transformers import DebertaV2Config, DebertaV2Model, DebertaV2PreTrainedModel

from ..base import PairwiseRewardModel, engine_backend
from ..chat import load_tokenizer, merge_system
from ..placement import model_kwargs

# The conversation template of the Better-PairRM model card.
BETTER_PAIRRM_TEMPLATE = "\n".join([
    "{% for message in messages -%}",
    "{% if message['role'] == 'user' -%}",
    "USER: {{ message['content']|trim -}}",
    "{% if not loop.last -%}",
    "{% endif %}",
    "{% elif message['role'] == 'assistant' -%}",
    "ASSISTANT: {{ message['content']|trim -}}",
    "{% if not loop.last -%}",
    "{% endif %}",
    "{% elif message['role'] == 'user_context' -%}",
    "USER: {{ message['content']|trim -}}",
    "{% if not loop.last -%}",
    "{% endif %}",
    "{% elif message['role'] == 'system' -%}",
    "SYSTEM MESSAGE: {{ message['content']|trim -}}",
    "{% if not loop.last -%}",
    "{% endif %}",
    "{% endif %}",
    "{% endfor -%}",
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}",
    "ASSISTANT: {% endif -%}",
])
# llm-blender's compare_conversations instruction (prepended to the source with no separator).
CONVERSATION_INSTRUCTION = ("Finish the following coversation in each i-th turn by filling in <Response i> with your "
                            "response.")
VARIANTS = {  # source_max_length, candidate_max_length, source truncation side
    "pairrm": (1224, 412),
    "better": (2030, 670),
}


class PairRMModel(DebertaV2PreTrainedModel):
    """``pretrained_model.*`` (DeBERTa-v3) + ``head_layer`` = Dropout, Linear(2h, h), Tanh, Dropout, Linear(h, n)."""

    config_class = DebertaV2Config
    base_model_prefix = "pretrained_model"

    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.pretrained_model = DebertaV2Model(config)
        h = config.hidden_size
        drop = getattr(config, "drop_out", 0.05)
        self.head_layer = nn.Sequential(nn.Dropout(drop), nn.Linear(2 * h, h), nn.Tanh(), nn.Dropout(drop),
                                        nn.Linear(h, getattr(config, "n_tasks", 1)))
        self.post_init()

    def logit(self, h_src: torch.Tensor, h_a: torch.Tensor, h_b: torch.Tensor) -> torch.Tensor:
        left = self.head_layer(torch.cat([h_src, h_a], dim=-1))
        right = self.head_layer(torch.cat([h_src, h_b], dim=-1))
        return (left - right).mean(dim=-1)


class PairRMRewardModel(PairwiseRewardModel):
    kind = "pairrm"

    def __init__(self, model: PairRMModel, tokenizer, *, name_or_path, variant="pairrm", token_budget=None,
                 backend=None):
        if variant not in VARIANTS:
            raise ValueError(f"PairRM variant must be one of {list(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.source_max_length, self.candidate_max_length = VARIANTS[variant]
        super().__init__(model, tokenizer, name_or_path=name_or_path,
                         max_length=self.source_max_length + 2 * self.candidate_max_length)
        cfg = model.config
        for field, token in (("source_prefix_id", "<|source|>"), ("cand1_prefix_id", "<|candidate1|>"),
                             ("cand2_prefix_id", "<|candidate2|>")):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id or token_id != getattr(cfg, field, token_id):
                raise ValueError(f"{name_or_path}: the tokenizer's {token} id ({token_id}) does not match config "
                                 f"{field}={getattr(cfg, field, None)}; use the checkpoint's own tokenizer")
        self.backend = (backend or engine_backend(token_budget))(model.pretrained_model, tokenizer.pad_token_id or 0,
                                                                 False)
        self._template = jinja2.Environment().from_string(BETTER_PAIRRM_TEMPLATE)

    @classmethod
    def from_pretrained(cls, checkpoint, *, name_or_path, device, dtype, attn_implementation=None,
                        device_map=None, max_length=None, token_budget=None, chat_template=None, backend=None):
        """The variant comes from the checkpoint (its rmplugins.json, its hub id, or the variant option given to
        ``identify``); the attention kernel is DeBERTa's own (``attn_implementation`` is refused)."""
        variant = checkpoint.variant
        fixed = ("its input format and lengths are its variant's (source and candidate limits, Better-PairRM's "
                 "conversation text)")
        for option, value, why in (("max_length", max_length, fixed), ("chat_template", chat_template, fixed),
                                   ("attn_implementation", attn_implementation, "its DeBERTa encoder runs its own "
                                    "(disentangled) attention, which no other kernel computes")):
            # taken so the loader can pass every family the same options (its attention default is None here)
            if value is not None:
                raise ValueError(f"{option}= does not apply to PairRM: {why}; drop it")
        tokenizer = load_tokenizer(checkpoint.path, name_or_path)
        if variant is None:
            raise ValueError(
                f"{name_or_path}: PairRM and Better-PairRM share this checkpoint layout but not their input format "
                "(context and candidate lengths, Better-PairRM's conversation template), and nothing in the files "
                "says which this is. Pass variant='pairrm' (llm-blender/PairRM) or variant='better' "
                "(mightbe/Better-PairRM), or write {\"kind\": \"pairrm\", \"variant\": \"...\"} to rmplugins.json "
                "in the checkpoint directory")
        model = PairRMModel.from_pretrained(checkpoint.path, **model_kwargs(device, dtype, None, device_map))
        return cls(model, tokenizer, name_or_path=name_or_path, variant=variant, token_budget=token_budget,
                   backend=backend)

    # ---------------------------------------------------------------- texts (reference-exact)
    def _truncate_text(self, text: str, max_length: int, side: str) -> str:
        """Better-PairRM's ``truncate_texts``: encode, cut, decode without special tokens."""
        old = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = side
        try:
            ids = self.tokenizer.encode(text, add_special_tokens=False, max_length=max_length, truncation=True)
        finally:
            self.tokenizer.truncation_side = old
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def texts(self, context: tuple[dict, ...], response_a: str, response_b: str) -> tuple[str, str, str]:
        """(source, candidate1, candidate2) strings as the reference builds them."""
        messages = [dict(m) for m in context]
        if self.variant == "better":
            source = self._template.render(messages=messages, add_generation_prompt=True)
            return (self._truncate_text(source, self.source_max_length, "left"),
                    self._truncate_text(response_a, self.candidate_max_length, "right"),
                    self._truncate_text(response_b, self.candidate_max_length, "right"))
        messages = merge_system(messages)
        if len(messages) == 1:
            return messages[0]["content"], response_a, response_b
        roles = [m["role"] for m in messages]
        if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
            raise ValueError(f"PairRM: multi-turn contexts must alternate user/assistant turns, got roles {roles}")
        users = messages[0::2]
        earlier = [m["content"] for m in messages[1::2]]
        source = CONVERSATION_INSTRUCTION + "\n".join(
            "USER: " + u["content"] + f"\nAssistant: <Response {i + 1}>" for i, u in enumerate(users))

        def candidate(answer: str) -> str:
            return "\n".join(f"<Response {i + 1}>: " + c for i, c in enumerate(earlier + [answer]))

        return source, candidate(response_a), candidate(response_b)

    def encode(self, source: str, cand1: str, cand2: str) -> tuple[list[int], list[int]]:
        """llm-blender ``tokenize_pair``: (ids, positions of the three prefix tokens)."""
        tok = self.tokenizer
        total = self.source_max_length + 2 * self.candidate_max_length
        src = tok.encode("<|source|>" + source, max_length=self.source_max_length, truncation=True)
        cand_max = (total - len(src)) // 2
        c1 = tok.encode("<|candidate1|>" + cand1, max_length=cand_max, truncation=True)
        c2 = tok.encode("<|candidate2|>" + cand2, max_length=cand_max, truncation=True)
        return src + c1 + c2, [1, len(src) + 1, len(src) + len(c1) + 1]

    def pair_logits(self, triples: list[tuple[str, str, str]]) -> torch.Tensor:
        """logit(a, b) per (source, a, b), as DebertaV2PairRM returns it."""
        return self.pair_logits_encoded([self.encode(*t) for t in triples])

    def pair_logits_encoded(self, encoded: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        hidden = self.backend.hidden_at([ids for ids, _ in encoded], [pos for _, pos in encoded])
        h = torch.stack(hidden).to(self.device)  # [N, 3, H]
        with torch.inference_mode():
            return self.model.logit(h[:, 0], h[:, 1], h[:, 2]).float().cpu()

    def encode_pair(self, a, b):
        """(ids, prefix positions) with a as candidate 1, and with a as candidate 2."""
        source, ca, cb = self.texts(a.context, a.response, b.response)
        return self.encode(source, ca, cb), self.encode(source, cb, ca)

    def pair_probs(self, encoded_pairs):
        """sigmoid((logit(a, b) - logit(b, a)) / 2)."""
        logits = self.pair_logits_encoded([e for pair in encoded_pairs for e in pair])
        return torch.sigmoid((logits[0::2] - logits[1::2]) / 2)
