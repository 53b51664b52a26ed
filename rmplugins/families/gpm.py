"""GPM (General Preference representation Model, seed 004): preference embeddings and GPO scores.

Reference (GPMPipeline of the model card):
- text = ``apply_chat_template(messages, tokenize=False)`` tokenized normally (two BOS with Llama-3 templates, as
  in training), right-truncated to 4096, the last token forced to eos;
- v = L2-normalize(value_head(h[last])), d = value_head rows (inferred from the weights, not in config.json);
- prompt state = h at (length of template(first message only)) - 1;
  R = block-diagonal skew-symmetric, R[2k, 2k+1] = -b_k, R[2k+1, 2k] = b_k, b = softmax(prompt_head(prompt state));
- s(a beats b) = v_a^T R^T v_b; P = sigmoid(s / tau), tau = 0.1;
- GPO score of candidate i among n: (1/n) sum_j (s_ij - s_ji) / tau.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from ..base import RewardModel, engine_backend
from ..chat import load_chat_tokenizer, merge_system, render
from ..placement import model_kwargs
from ..ranking import Ranking, from_scores
from ..refusals import TOO_LONG, Unscorable
from .common import pad_or_eos, positive_temperature

ARCHITECTURE = "GPMLlamaForPreference"  # GPM's checkpoints say LlamaForCausalLM; vLLM runs this name as the plugin


class GPMHeads:
    """``model.*`` + ``value_head`` [d, h] (+ ``prompt_head`` [d/2, h]); the unused ``lm_head`` is not loaded."""

    base_model_prefix = "model"
    _keys_to_ignore_on_load_unexpected = [r"lm_head"]

    def __init__(self, config):
        super().__init__(config)
        d = config.value_head_dim
        self.model = self.backbone_class(config)
        self.value_head = nn.Linear(config.hidden_size, d, bias=False)
        self.prompt_head = nn.Linear(config.hidden_size, d // 2, bias=False) if config.add_prompt_head else None
        self.post_init()

    def embed(self, h_last: torch.Tensor) -> torch.Tensor:
        return preference_embedding(self.value_head, h_last)

    def skew_matrix(self, h_prompt: torch.Tensor) -> torch.Tensor:
        if self.prompt_head is None:
            raise ValueError("this GPM checkpoint has no prompt_head, so preferences cannot be computed")
        return skew_operator(skew_weights(self.prompt_head, h_prompt))


_CLASSES: dict[type, type] = {}


def gpm_model_class(config, name_or_path) -> type:
    """The card's ``CustomRewardModel``: the base model transformers' ``AutoModel`` maps the checkpoint's config to
    (``LlamaModel`` for GPM-Llama-3.1-8B, ``GemmaModel`` for GPM-Gemma-2B), under its own pretrained class, with the
    heads. A Gemma GPM read as Llama (the embedding scale, GeGLU and the norms' +1 lost) gave other preferences."""
    backbone = AutoModel._model_mapping.get(type(config), None)
    parent = backbone.__mro__[1] if backbone is not None else None
    if parent is None or not issubclass(parent, PreTrainedModel) or parent is PreTrainedModel:
        raise ValueError(f"{name_or_path}: transformers has no base model for model_type {config.model_type!r}, "
                         "so its GPM backbone cannot be built")
    if backbone not in _CLASSES:
        _CLASSES[backbone] = type(f"GPM{backbone.__name__}", (GPMHeads, parent), {"backbone_class": backbone})
    return _CLASSES[backbone]


# The card's head arithmetic, shared with the vLLM plugin (rmplugins.vllm.plugin.gpm).
def preference_embedding(value_head: nn.Linear, h_last: torch.Tensor) -> torch.Tensor:
    """v = L2-normalize(value_head(h)), float32 [N, d]."""
    return F.normalize(value_head(h_last).float(), p=2, dim=-1)


def skew_weights(prompt_head: nn.Linear, h_prompt: torch.Tensor) -> torch.Tensor:
    """b = softmax(prompt_head(prompt state)), float32 [N, d/2]."""
    return torch.softmax(prompt_head(h_prompt).float(), dim=-1)


def skew_operator(b: torch.Tensor) -> torch.Tensor:
    """R [N, d, d]: block-diagonal, R[2k, 2k+1] = -b_k, R[2k+1, 2k] = b_k."""
    d = 2 * b.shape[1]
    R = torch.zeros(b.shape[0], d, d, dtype=b.dtype, device=b.device)
    for k in range(d // 2):
        R[:, 2 * k, 2 * k + 1] = -b[:, k]
        R[:, 2 * k + 1, 2 * k] = b[:, k]
    return R


class GPMRewardModel(RewardModel):
    kind = "gpm"
    rank_methods = ("gpo",)

    def __init__(self, model: GPMHeads, tokenizer, *, name_or_path, max_length=4096, token_budget=None, tau=0.1,
                 backend=None):
        super().__init__(model, tokenizer, name_or_path=name_or_path, max_length=max_length)
        self.tau = positive_temperature("tau", tau, 0.1)
        if tokenizer.eos_token_id is None:
            raise ValueError(f"{name_or_path}: GPM needs an eos token (the last position is forced to eos)")
        self.backend = (backend or engine_backend(token_budget))(model.model, pad_or_eos(tokenizer), True)

    @classmethod
    def from_pretrained(cls, checkpoint, *, name_or_path, device, dtype, attn_implementation=None,
                        device_map=None, max_length=None, token_budget=None, chat_template=None, tau=0.1,
                        backend=None):
        positive_temperature("tau", tau, 0.1)  # before the weights load
        shapes = checkpoint.shapes
        config = AutoConfig.from_pretrained(checkpoint.path)
        config.value_head_dim = shapes["value_head.weight"][0]  # d is not in config.json
        config.add_prompt_head = "prompt_head.weight" in shapes
        if config.value_head_dim % 2:
            raise ValueError(f"{name_or_path}: GPM value_head has {config.value_head_dim} rows; an even "
                             "dimension is needed for the skew-symmetric preference operator")
        model_class = gpm_model_class(config, name_or_path)
        tokenizer = load_chat_tokenizer(checkpoint.path, name_or_path, chat_template)
        model = model_class.from_pretrained(checkpoint.path, config=config,
                                            **model_kwargs(device, dtype, attn_implementation, device_map))
        return cls(model, tokenizer, name_or_path=name_or_path, max_length=max_length or 4096,
                   token_budget=token_budget, tau=tau, backend=backend)

    @staticmethod
    def vllm_engine_args(checkpoint, name_or_path) -> dict:
        """rmplugins' vLLM plugin model (:mod:`rmplugins.vllm.plugin.gpm`), named over the checkpoint's
        ``LlamaForCausalLM``: its ``embed`` task gives the unit embedding and the skew operator's weights."""
        if checkpoint.config.get("model_type") != "llama":
            raise ValueError(f"{name_or_path}: rmplugins' vLLM plugin for GPM is built on vLLM's Llama, and this GPM's "
                             f"backbone is {checkpoint.config.get('model_type')!r}; leave engine unset (the "
                             "transformers engine runs any backbone)")
        return {"runner": "pooling", "hf_overrides": {"architectures": [ARCHITECTURE]}}

    @property
    def value_head_dim(self) -> int:
        return self.model.value_head.out_features

    # ---------------------------------------------------------------- encoding (reference-exact)
    def _tokens(self, messages: list[dict]) -> list[int]:
        return self.tokenizer(self.tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"]

    @cached_property
    def _template_takes_system(self) -> bool:
        """Whether the chat template renders a system message (Gemma's raises); where not, it is folded into the
        first user turn, as :func:`~rmplugins.chat.render` does for every family (and logs once)."""
        probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        try:
            self.tokenizer.apply_chat_template(probe, tokenize=False)
            return True
        except Exception:  # jinja2's TemplateError from the template's raise_exception
            render(self.tokenizer, probe, name=self.name_or_path)  # the fold, logged once
            return False

    def encode(self, messages: list[dict]) -> tuple[list[int], int]:
        """(token ids with the last forced to eos, index of the prompt state). Longer than ``max_length``: cut on
        the right, as the card's pipeline does; refused when that cut would leave none of the response (every
        response would then be read at the same token, and every comparison would be a silent tie). A template
        without a system role (Gemma's) gets the system message folded into the first user turn first, as every
        family does (:func:`~rmplugins.chat.render`), so the prompt state is that turn's end."""
        if messages[0]["role"] == "system" and not self._template_takes_system:
            messages = merge_system(messages)
        full = self._tokens(messages)
        if len(full) > self.max_length:
            context = len(self._tokens(messages[:-1]))
            if context >= self.max_length - 1:  # the last kept token is overwritten with eos
                raise Unscorable(
                    f"GPM: the conversation before the response has {context} tokens, and max_length is "
                    f"{self.max_length}: cutting it on the right, as the reference pipeline does, would leave none of "
                    "the response, and every response would tie. Shorten the prompt, or load with a larger "
                    "max_length=... (the model was trained on 4096)", TOO_LONG)
        ids = self._truncate(full, side="right")
        ids[-1] = self.tokenizer.eos_token_id
        prompt_len = len(self._truncate(self._tokens(messages[:1]), side="right"))
        return ids, min(max(prompt_len - 1, 0), len(ids) - 1)

    def embeddings(self, conversations) -> tuple[torch.Tensor, torch.Tensor]:
        """(v [N, d] unit embeddings, R [N, d, d] preference operators from each prompt state)."""
        return self._batched(self.embed_rows, [self.encode(c.messages) for c in conversations])

    def embed_rows(self, encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched model call over encoded conversations: (v [N, d], R [N, d, d])."""
        if self.backend.name == "vllm":  # the plugin reads the same two positions (the prompt state's index given)
            out = self.backend.embed([ids for ids, _ in encoded], [{"prompt_state_index": pos} for _, pos in encoded])
            d = self.value_head_dim
            return out[:, :d], skew_operator(out[:, d:])
        hidden = self.backend.hidden_at([ids for ids, _ in encoded], [[-1, pos] for _, pos in encoded])
        h = torch.stack(hidden).to(self.device)
        with torch.inference_mode():
            v = self.model.embed(h[:, 0])
            R = self.model.skew_matrix(h[:, 1])
        return v.cpu(), R.cpu()

    @staticmethod
    def preference(v_a: torch.Tensor, R: torch.Tensor, v_b: torch.Tensor) -> torch.Tensor:
        """s(a beats b) = v_a^T R^T v_b, batched."""
        return torch.bmm(torch.bmm(v_a.unsqueeze(1), R.transpose(1, 2)), v_b.unsqueeze(2)).view(-1)

    def encode_pair(self, a, b):
        return self.encode(a.messages), self.encode(b.messages)

    def pair_probs(self, encoded_pairs):
        """sigmoid(s(a beats b) / tau), R from a's prompt state as in the reference."""
        n = len(encoded_pairs)
        v, R = self._batched(self.embed_rows, [a for a, _ in encoded_pairs] + [b for _, b in encoded_pairs])
        return torch.sigmoid(self.preference(v[:n], R[:n], v[n:]) / self.tau)

    def gpo_table(self, v: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """table[i, j] = s(i beats j) / tau under one prompt's operator R [d, d]."""
        return (v @ R.T @ v.T) / self.tau

    def rank_many(self, prompts, candidate_lists, method=None) -> list[Ranking]:
        """GPO scores per group: one forward per distinct candidate, all groups in one engine call (each prompt's
        candidates share its prefix), then an n x n table of small products per group."""
        self._check_method(method)
        firsts, backs = self._distinct_groups(prompts, candidate_lists)
        if not firsts:
            return []
        v_all, R_all = self.embeddings([c for f in firsts for c in f])
        out = []
        for v_group, R_group, back in zip(v_all.split([len(f) for f in firsts]),
                                          R_all.split([len(f) for f in firsts]), backs):
            table = self.gpo_table(v_group[back], R_group[0])  # the group's prompt state (every candidate shares it)
            scores = ((table - table.T).sum(dim=1) / len(back)).tolist()
            out.append(from_scores(scores, "gpo", len(v_group) * (len(v_group) - 1) // 2))
        return out
